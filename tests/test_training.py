import json

import pytest
import torch

from smx.errors import UserError
from smx.science import training
from smx.science.data import ImageTensors, load_dataset
from smx.science.methods.params import GaussianParams, SmoothMixParams
from smx.science.models import build_model
from smx.science.training import (EpochMetrics, TrainSettings, checkpoint_path, list_checkpoints, load_weights,
                                 metrics_path, train)


class Interrupted(Exception):
    pass


def settings(**changes):
    values = dict(
        method="smoothmix",
        params=SmoothMixParams(steps=1, noise_samples=2, eta=1.0, warmup=2),
        sigma=0.5,
        epochs=3,
        batch_size=16,
        lr=0.05,
        lr_step=2,
        lr_gamma=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        seed=3,
        dataset="mnist-mini",
    )
    values.update(changes)
    return TrainSettings(**values)


def fresh_model():
    torch.manual_seed(0)
    return build_model("lenet", "mnist-mini")


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-mini", "train").subset(range(40))  # 2 full batches and a partial one


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    model = fresh_model()
    metrics = []
    final = train(model, data, settings(), tmp_path_factory.mktemp("reference"), on_epoch=metrics.append)
    return model.state_dict(), final, metrics


def assert_same_weights(model, state):
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def stop_after(epoch):
    """An on_checkpoint callback: a run killed once that epoch's checkpoint is written."""
    def on_checkpoint(path, written_epoch):
        if written_epoch == epoch:
            raise Interrupted

    return on_checkpoint


def test_resumed_run_ends_with_identical_weights(data, uninterrupted, tmp_path):
    with pytest.raises(Interrupted):
        train(fresh_model(), data, settings(), tmp_path, on_checkpoint=stop_after(1))
    assert [epoch for epoch, _ in list_checkpoints(tmp_path)] == [1]

    resumed = fresh_model()
    saved, removed, metrics = [], [], []
    final = train(
        resumed,
        data,
        settings(),
        tmp_path,
        on_checkpoint=lambda path, epoch: saved.append((path.name, epoch)),
        on_checkpoint_removed=removed.append,
        on_epoch=metrics.append,
    )

    assert_same_weights(resumed, uninterrupted[0])
    assert final.name == uninterrupted[1].name == "epoch-0003.pt"
    assert saved == [("epoch-0002.pt", 2), ("epoch-0003.pt", 3)]
    assert [path.name for path in removed] == ["epoch-0001.pt"]
    assert [epoch for epoch, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert [m.epoch for m in metrics] == [2, 3]
    assert [m.loss for m in metrics] == [m.loss for m in uninterrupted[2][1:]]


def test_a_checkpoint_folder_deleted_while_training_runs_is_made_again(data, uninterrupted, tmp_path):
    import shutil

    folder = tmp_path / "checkpoints"
    model = fresh_model()
    final = train(model, data, settings(), folder,
                  on_checkpoint=lambda path, epoch: shutil.rmtree(folder) if epoch == 1 else None)
    assert final.name == "epoch-0003.pt" and [epoch for epoch, _ in list_checkpoints(folder)] == [2, 3]
    assert_same_weights(model, uninterrupted[0])


@pytest.mark.parametrize("damage", ["not-intact", "another-architecture"])
def test_a_checkpoint_that_is_not_what_was_written_is_set_aside_and_training_resumes_before_it(
        data, uninterrupted, tmp_path, damage):
    with pytest.raises(Interrupted):
        train(fresh_model(), data, settings(), tmp_path, on_checkpoint=stop_after(2))
    latest = checkpoint_path(tmp_path, 2)
    if damage == "another-architecture":  # loadable, with the right keys at the top, but not a LeNet's weights
        state = torch.load(latest, weights_only=True)
        state["model"] = build_model("cifar_resnet20", "cifar10").state_dict()
        torch.save(state, latest)
    removed, metrics = [], []
    resumed = fresh_model()
    train(resumed, data, settings(), tmp_path, on_checkpoint_removed=removed.append, on_epoch=metrics.append,
          is_intact=lambda path: damage != "not-intact" or path != latest)
    assert latest.with_name("epoch-0002.pt.corrupt").is_file() and latest in removed
    assert [m.epoch for m in metrics] == [2, 3]  # from epoch 1's checkpoint on
    assert_same_weights(resumed, uninterrupted[0])


def test_epoch_metrics_follow_the_reference_schedule_by_default(uninterrupted):
    metrics = uninterrupted[2]
    # lr_step 2 decays one epoch late, as "step 50: epochs 0-50 at 0.1" in the jh-jeong repositories.
    assert [m.lr for m in metrics] == pytest.approx([0.05, 0.05, 0.05])
    for m in metrics:
        assert m.loss > 0 and 0 <= m.noisy_accuracy <= 1 and m.seconds > 0
        assert set(m.extras) == {"clean_loss", "mix_loss", "mask_rate"}


@pytest.mark.parametrize("lr_decay, other, rates", [
    # lr_step 2: one epoch late, as "step 50: epochs 0-50 at 0.1" in the jh-jeong repositories; on time, as Cohen's.
    ("one_epoch_late", "on_time", [0.05, 0.05, 0.05, 0.005, 0.005]),
    ("on_time", "one_epoch_late", [0.05, 0.05, 0.005, 0.005, 0.0005]),
])
def test_lr_decays_follow_their_schedule_and_resume_exactly(data, tmp_path, lr_decay, other, rates):
    schedule = settings(method="gaussian", params=GaussianParams(), epochs=5, lr_decay=lr_decay)
    whole, metrics = fresh_model(), []
    train(whole, data, schedule, tmp_path / "whole", on_epoch=metrics.append)
    assert [m.lr for m in metrics] == pytest.approx(rates)
    with pytest.raises(Interrupted):
        train(fresh_model(), data, schedule, tmp_path / "split", on_checkpoint=stop_after(3))
    resumed, resumed_metrics = fresh_model(), []
    train(resumed, data, schedule, tmp_path / "split", on_epoch=resumed_metrics.append)
    assert_same_weights(resumed, whole.state_dict())
    assert [m.lr for m in resumed_metrics] == pytest.approx(rates[3:])
    with pytest.raises(UserError, match="lr_decay"):
        train(fresh_model(), data, settings(method="gaussian", params=GaussianParams(), epochs=5, lr_decay=other),
              tmp_path / "split")


def test_checkpoints_from_before_amp_and_lr_decay_were_recorded_count_as_their_values_then(data, tmp_path):
    old = settings(method="gaussian", params=GaussianParams(), epochs=2, lr_decay="on_time")
    with pytest.raises(Interrupted):
        train(fresh_model(), data, old, tmp_path, on_checkpoint=stop_after(1))
    path = checkpoint_path(tmp_path, 1)
    state = torch.load(path, weights_only=True)
    del state["settings"]["amp"], state["settings"]["lr_decay"]
    torch.save(state, path)
    with pytest.raises(UserError, match="lr_decay"):
        train(fresh_model(), data, settings(method="gaussian", params=GaussianParams(), epochs=2), tmp_path)
    metrics = []
    train(fresh_model(), data, old, tmp_path, on_epoch=metrics.append)
    assert [m.epoch for m in metrics] == [2]


def test_checkpoint_loads_with_weights_only(uninterrupted):
    state = torch.load(uninterrupted[1], weights_only=True)
    assert state["epoch"] == 3
    assert all(torch.is_tensor(value) for value in state["rng"].values())
    assert state["settings"]["params"]["noise_samples"] == 2
    model = build_model("lenet", "mnist-mini")
    load_weights(model, uninterrupted[1])
    assert_same_weights(model, uninterrupted[0])


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(data, uninterrupted, tmp_path):
    with pytest.raises(Interrupted):
        train(fresh_model(), data, settings(), tmp_path, on_checkpoint=stop_after(2))
    newest = tmp_path / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    resumed, removed = fresh_model(), []
    train(resumed, data, settings(), tmp_path, on_checkpoint_removed=removed.append)

    assert newest in removed
    assert_same_weights(resumed, uninterrupted[0])


def test_finished_run_returns_its_final_checkpoint(data, uninterrupted, tmp_path):
    final = train(fresh_model(), data, settings(epochs=1), tmp_path)
    again, epochs = fresh_model(), []
    assert train(again, data, settings(epochs=1), tmp_path, on_epoch=epochs.append) == final
    assert epochs == []


@pytest.mark.parametrize("written_by", ["now", "before metrics moved out of checkpoints"])
def test_a_resumed_run_gives_back_the_metrics_of_the_epoch_it_resumes_after(data, tmp_path, written_by):
    with pytest.raises(Interrupted):  # as a kill after the checkpoint's write, before its callbacks
        train(fresh_model(), data, settings(epochs=2), tmp_path, on_checkpoint=stop_after(1))
    checkpoint = checkpoint_path(tmp_path, 1)
    written = json.loads(metrics_path(checkpoint).read_text())
    if written_by != "now":
        state = torch.load(checkpoint, weights_only=True)
        torch.save({**state, "metrics": written}, checkpoint)
        metrics_path(checkpoint).unlink()
    restored = []
    train(fresh_model(), data, settings(epochs=2), tmp_path,
          on_resume=lambda path, epoch, metrics: restored.append((path, epoch, metrics)))
    assert restored == [(checkpoint, 1, EpochMetrics(**written))] and written["seconds"] > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        *(["epoch-0001.metrics.json"] if written_by == "now" else []), "epoch-0001.pt",
        "epoch-0002.metrics.json", "epoch-0002.pt"]


def test_two_runs_of_the_same_settings_write_the_same_bytes(data, tmp_path):
    """Nothing in a checkpoint depends on the clock: its sha256 tells whether a run was reproduced."""
    first = train(fresh_model(), data, settings(epochs=1), tmp_path / "first")
    second = train(fresh_model(), data, settings(epochs=1), tmp_path / "second")
    assert first.read_bytes() == second.read_bytes()


def test_resuming_with_other_settings_is_refused(data, tmp_path):
    train(fresh_model(), data, settings(epochs=1), tmp_path)
    with pytest.raises(UserError, match="sigma"):
        train(fresh_model(), data, settings(epochs=2, sigma=0.25), tmp_path)


def test_gaussian_trains_from_a_dataset_through_a_dataloader(data, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "PROGRESS_INTERVAL_SECONDS", 0.0)
    dataset = torch.utils.data.TensorDataset(data.images, data.labels)
    progress = []
    gaussian = settings(method="gaussian", params=GaussianParams(), epochs=1, num_workers=0)
    train(fresh_model(), dataset, gaussian, tmp_path, on_progress=lambda *call: progress.append(call))
    assert progress[-1] == (1.0, "epoch 1/1 batch 3/3")
    assert [fraction for fraction, _ in progress] == sorted(fraction for fraction, _ in progress)


def test_too_small_a_batch_for_the_chunks_is_a_user_error(data, tmp_path):
    with pytest.raises(UserError, match="batch_size"):
        train(fresh_model(), data, settings(batch_size=1), tmp_path)


def test_a_diverging_run_is_a_user_error_that_names_what_to_check(data, tmp_path):
    gaussian = settings(method="gaussian", params=GaussianParams(), epochs=1, sigma=1e300)  # noise of infinities
    with pytest.raises(UserError, match=r"training diverged: the mean loss of epoch 1 is nan; lower train.lr, check "
                                        r"that train.sigma suits inputs in \[0, 1\], or check the data"):
        train(fresh_model(), data, gaussian, tmp_path)


def test_training_lowers_the_loss_on_mnist_mini(tmp_path):
    subset = load_dataset("mnist-mini", "train").subset(range(256))
    gaussian = settings(method="gaussian", params=GaussianParams(), epochs=3, batch_size=16, lr=0.05, sigma=0.25)
    metrics = []
    train(fresh_model(), ImageTensors(subset.images, subset.labels), gaussian, tmp_path, on_epoch=metrics.append)
    assert metrics[-1].loss < 0.7 * metrics[0].loss
    assert metrics[-1].noisy_accuracy > 0.5
