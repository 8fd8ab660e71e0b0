"""smx remove: experiments leave the store with what only they needed; shared jobs and running work stay."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from smx.db.models import Aggregate, Certificate, CertifiedAccuracy, Checkpoint, Experiment, Job, JobParent
from smx.errors import UserError
from smx.scheduler import queue
from smx.scheduler.removal import KeptJob, plan_removal, remove_experiments
from tests.test_queue import keys_named, run_every_ready_job, sigma_variants, submit_plan


def give_results(store, plan, experiment: str) -> None:
    """What running the plan's jobs leaves: certificates, a checkpoint file, logs and the aggregate's summaries."""
    with store.session() as session:
        for job in plan.jobs:
            store.log_path(job.key).parent.mkdir(parents=True, exist_ok=True)
            store.log_path(job.key).write_text(f"{job.name}\n")
            if job.kind == "train" and not store.checkpoint_dir(job.key).exists():
                checkpoint = store.checkpoint_dir(job.key) / "checkpoint-0001.pt"
                checkpoint.parent.mkdir(parents=True)
                checkpoint.write_bytes(b"weights")
                session.add(Checkpoint(job_key=job.key, epoch=1, path=str(checkpoint), sha256="0" * 64, size=7,
                                       final=True))
            if job.kind == "certify" and session.get(Certificate, (job.key, 0)) is None:
                session.add_all(Certificate(job_key=job.key, sample_index=index, label=0, prediction=0, radius=0.5,
                                            correct=1, seconds=0.1) for index in range(3))
        aggregate = next(job for job in plan.jobs if job.kind == "aggregate")
        for entry in aggregate.inputs["configs"]:
            session.add(Aggregate(job_key=aggregate.key, certify_key=entry["certify_key"], experiment=experiment,
                                  config_name=entry["name"], method="gaussian", sigma=0.25, num_samples=3, acr=0.5,
                                  clean_accuracy=1.0, abstain_rate=0.0, certified=[CertifiedAccuracy(
                                      radius=0.0, accuracy=1.0)]))
    (store.root / "results" / experiment).mkdir(parents=True, exist_ok=True)
    (store.root / "results" / experiment / "p.tsv").write_text("idx\n")
    (store.root / "plots").mkdir(exist_ok=True)
    (store.root / "plots" / f"{experiment}.png").write_bytes(b"png")


def counts(store) -> dict[str, int]:
    with store.read_session() as session:
        return {table.__tablename__: session.scalar(select(func.count()).select_from(table))
                for table in (Experiment, Job, JobParent, Certificate, Checkpoint, Aggregate, CertifiedAccuracy)}


def test_removing_an_experiment_keeps_the_jobs_another_needs_and_deletes_the_rest_with_their_files(
        store, tmp_path: Path) -> None:
    x, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    y, _ = submit_plan(store, tmp_path, "y", sigma_variants("p", "q"))
    run_every_ready_job(store, tmp_path)
    give_results(store, x, "x")
    give_results(store, y, "y")
    (aggregate_x,) = keys_named(x, "aggregate/x")

    removal = remove_experiments(store, ["x"])
    assert removal.job_keys == [aggregate_x]
    train_p, certify_p = keys_named(x, "train/p")[0], keys_named(x, "certify/p")[0]
    assert removal.kept == [KeptJob(certify_p, "certify/p", ("y",), True), KeptJob(train_p, "train/p", ("y",), True)]
    assert removal.kept[0].reason() == "in the plan of y"
    assert (removal.certificates, removal.checkpoints, removal.not_removed) == (0, 0, [])
    assert removal.summary() == "x: 1 job(s), 0 certificate(s), 0 checkpoint(s); 2 job(s) kept for other experiments"
    assert counts(store) == {"experiments": 1, "jobs": 5, "job_parents": 4, "certificates": 6, "checkpoints": 2,
                             "aggregates": 2, "certified_accuracy": 2}
    assert not store.log_path(aggregate_x).exists() and not (store.root / "results" / "x").exists()
    assert not (store.root / "plots" / "x.png").exists() and (store.root / "plots" / "y.png").exists()
    assert all(store.log_path(key).exists() for key in keys_named(y, "train/p", "certify/p"))

    removal = remove_experiments(store, ["y"])
    assert (len(removal.job_keys), removal.kept, removal.certificates, removal.checkpoints) == (5, [], 6, 2)
    assert set(counts(store).values()) == {0}
    # The store's folders stay, holding nothing of the experiments.
    assert [path for path in store.root.glob("*/*") if path.parent.name != "locks"] == []


def test_the_jobs_of_an_earlier_version_go_too_unless_a_job_left_depends_on_them(store, tmp_path: Path) -> None:
    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))
    run_every_ready_job(store, tmp_path)
    give_results(store, first, "x")
    submit_plan(store, tmp_path, "x", sigma_variants("p"))  # q leaves the current plan; its summary stays
    run_every_ready_job(store, tmp_path)
    with store.read_session() as session:
        planned = plan_removal(session, store, ["x"])
    # Both versions' aggregate jobs, and every job of p and q.
    assert sorted(_names(store, planned.job_keys)) == ["aggregate/x", "aggregate/x", "certify/p", "certify/q",
                                                       "train/p", "train/q"]

    # z's plan includes q: q's jobs stay, and with them the old aggregate job's parents.
    submit_plan(store, tmp_path, "z", sigma_variants("q"))
    removal = remove_experiments(store, ["x"])
    assert [(job.name, job.experiments) for job in removal.kept] == [("certify/q", ("z",)), ("train/q", ("z",))]
    with store.read_session() as session:
        assert set(session.scalars(select(Job.name))) == {"train/q", "certify/q", "aggregate/z"}
        assert session.scalar(select(func.count()).select_from(Certificate)) == 3


def _names(store, keys: list[str]) -> list[str]:
    with store.read_session() as session:
        return list(session.scalars(select(Job.name).where(Job.key.in_(keys))))


def test_jobs_still_to_run_or_stopping_are_refused_with_the_fix_and_nothing_is_removed(store, tmp_path: Path) -> None:
    plan, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    before = counts(store)
    with pytest.raises(UserError, match=r"cannot remove x yet: 3 of its jobs are pending or running \(aggregate/x "
                                        r"\(pending\), certify/p \(pending\), train/p \(pending\)\)\.\n"
                                        r"Fix: `smx cancel x` first"):
        remove_experiments(store, ["x"])
    assert counts(store) == before
    # A cancelled job whose process has not ended yet is still writing.
    job = queue.claim_next(store, device="cpu", slot=tmp_path / "slot", pid=4321)
    queue.cancel(store, ["x"])
    with pytest.raises(UserError, match=r"cannot remove x yet: train/p stopped while running, and the process may "
                                        r"not have ended yet\.\nFix: run smx remove again in a few seconds \(at most "
                                        r"30\)\.$"):
        remove_experiments(store, ["x"])
    queue.release(store, job.key, 4321)
    assert len(remove_experiments(store, ["x"]).job_keys) == 3
    assert counts(store)["jobs"] == 0


def test_an_unknown_name_is_refused_naming_those_the_store_holds(store, tmp_path: Path) -> None:
    submit_plan(store, tmp_path, "x", sigma_variants("p"))
    with pytest.raises(UserError, match=r"no experiment named 'nope' in the store \(known: x\)"):
        remove_experiments(store, ["x", "nope"])
    assert counts(store)["experiments"] == 1


def test_jobs_behind_another_experiments_earlier_summaries_stay(store, tmp_path: Path) -> None:
    x, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    y, _ = submit_plan(store, tmp_path, "y", sigma_variants("p"))
    run_every_ready_job(store, tmp_path)
    give_results(store, x, "x")
    give_results(store, y, "y")
    submit_plan(store, tmp_path, "y", sigma_variants("q"))  # y's summaries of p stay, in the store's history
    removal = remove_experiments(store, ["x"])
    assert removal.job_keys == keys_named(x, "aggregate/x")
    assert [(job.name, job.reason()) for job in removal.kept] == [("certify/p", "earlier summaries of y use it"),
                                                                   ("train/p", "earlier summaries of y use it")]
    assert removal.summary().endswith("; 2 job(s) kept for other experiments")
    with store.read_session() as session:
        assert {job.name for job in session.scalars(select(Job))} >= {"train/p", "certify/p", "aggregate/y"}


def test_an_earlier_versions_analyses_go_with_their_training(store, tmp_path: Path) -> None:
    analysed = "\n[analyze]\nepsilons = [1.0]\nmc_samples = 8\n"
    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p") + analysed)
    run_every_ready_job(store, tmp_path)
    give_results(store, first, "x")
    submit_plan(store, tmp_path, "x", sigma_variants("q"))  # no analyses, another sigma: p's jobs are history
    run_every_ready_job(store, tmp_path)
    removal = remove_experiments(store, ["x"])
    assert removal.kept == []
    assert counts(store)["jobs"] == 0


def test_jobs_of_the_same_name_kept_for_different_experiments_are_each_named(store, tmp_path: Path) -> None:
    # x's first version certified p at sigma 0.25 (shared with y), its second at 0.5 (shared with z).
    first, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    submit_plan(store, tmp_path, "y", sigma_variants("p"))
    run_every_ready_job(store, tmp_path)
    give_results(store, first, "x")
    second_body = '\n[[variant]]\nname = "p"\ntrain.method = "gaussian"\ntrain.sigma = 0.5\n'
    second, _ = submit_plan(store, tmp_path, "x", second_body)
    submit_plan(store, tmp_path, "z", second_body)
    run_every_ready_job(store, tmp_path)
    removal = remove_experiments(store, ["x"])
    assert sorted((job.name, job.experiments) for job in removal.kept) == [
        ("certify/p", ("y",)), ("certify/p", ("z",)), ("train/p", ("y",)), ("train/p", ("z",))]
    assert removal.summary().endswith("; 4 job(s) kept for other experiments")


def test_a_plot_another_experiments_name_could_have_written_stays(store, tmp_path: Path) -> None:
    a, _ = submit_plan(store, tmp_path, "a", sigma_variants("p"))
    submit_plan(store, tmp_path, "a-confidence", sigma_variants("q"))
    run_every_ready_job(store, tmp_path)
    plots = store.root / "plots"
    plots.mkdir()
    for stem in ("a", "a-confidence", "a-mixing-ratio", "a-confidence-confidence"):
        (plots / f"{stem}.png").write_bytes(b"png")
    exports = store.root / "exports"
    (exports / "a").mkdir(parents=True)
    for name in ("a.csv", "a-confidence.csv"):
        (exports / name).write_text("config\n")
    remove_experiments(store, ["a"])
    # a-confidence.png is also the plot of the experiment a-confidence.
    assert sorted(path.name for path in plots.iterdir()) == ["a-confidence-confidence.png", "a-confidence.png"]
    assert sorted(path.name for path in exports.iterdir()) == ["a-confidence.csv"]
    # exports/a-confidence.csv could be `smx export`'s folder of an experiment "a-confidence.csv", and is a's
    # TUI export: neither removal of the other takes it.
    submit_plan(store, tmp_path, "b", sigma_variants("r"))
    (exports / "b.csv").write_text("config\n")
    _import_as(store, "b.csv")
    remove_experiments(store, ["b.csv"])
    assert (exports / "b.csv").exists()


def test_a_store_changed_since_the_user_confirmed_removes_nothing(store, tmp_path: Path) -> None:
    x, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    run_every_ready_job(store, tmp_path)
    with store.read_session() as session:
        confirmed = plan_removal(session, store, ["x"]).job_keys
    submit_plan(store, tmp_path, "x", sigma_variants("p", "q"))  # meanwhile a submit adds q, whose jobs are pending
    run_every_ready_job(store, tmp_path)
    with pytest.raises(UserError, match=r"the store changed while smx remove asked: x now has 6 job\(s\) to delete, "
                                        r"not 3; nothing was removed\.\nFix: run smx remove again\."):
        remove_experiments(store, ["x"], confirmed=confirmed)
    assert counts(store)["experiments"] == 1


def test_files_go_back_when_the_transaction_fails(store, tmp_path: Path, monkeypatch) -> None:
    x, _ = submit_plan(store, tmp_path, "x", sigma_variants("p"))
    run_every_ready_job(store, tmp_path)
    give_results(store, x, "x")
    before = sorted(path.relative_to(store.root) for path in store.root.rglob("*"))
    import smx.scheduler.removal as removal_module

    moving = removal_module._move_aside

    def fail_after_moving(removal, trash, moved):  # type: ignore[no-untyped-def]
        moving(removal, trash, moved)
        assert len(moved) == 6  # a checkpoint folder, 3 logs, the certification logs, the plot
        raise OSError("disk gone")

    monkeypatch.setattr(removal_module, "_move_aside", fail_after_moving)
    with pytest.raises(OSError, match="disk gone"):
        remove_experiments(store, ["x"])
    assert sorted(path.relative_to(store.root) for path in store.root.rglob("*")
                  if "trash" not in path.parts) == before
    assert counts(store)["experiments"] == 1


def test_a_retry_that_commits_while_remove_waits_for_its_rows_stops_the_removal(store, tmp_path: Path) -> None:
    if store.is_sqlite:
        pytest.skip("SQLite lets one writer in at a time: a retry cannot run beside a removal")
    import threading

    from sqlalchemy import update

    submit_plan(store, tmp_path, "x", sigma_variants("p"))
    queue.cancel(store, ["x"])
    outcome: list[object] = []
    with store.session() as retrying:
        # A retry, not yet committed, holds the rows it queues again.
        retrying.execute(update(Job).where(Job.name == "train/p").values(status="pending"))
        remover = threading.Thread(target=lambda: outcome.append(_attempt_removal(store)))
        remover.start()
        remover.join(timeout=2)
        assert remover.is_alive()  # waiting for the retry's rows
    remover.join(timeout=30)
    assert isinstance(outcome[0], UserError) and "train/p (pending)" in outcome[0].message
    assert counts(store)["jobs"] == 3


def _attempt_removal(store) -> object:  # type: ignore[no-untyped-def]
    try:
        return remove_experiments(store, ["x"])
    except UserError as error:
        return error


def _import_as(store, experiment: str) -> None:
    from smx.imports import ImportOptions, load_log, store_log

    log = store.root / "imported.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.5\t1\t0:00:01.000000\n")
    store_log(store, load_log(log, ImportOptions(experiment=experiment, method="gaussian", sigma=0.5,
                                                 dataset="mnist", config_name=None, params=[], note="")))
