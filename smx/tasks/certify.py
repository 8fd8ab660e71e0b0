"""Certify job: run CERTIFY on the test images a config selects, storing one row per image as it goes.

Each image's noise comes from a generator seeded by the experiment's seed and the image's index
(smoothing.image_noise_seed), and certificates are stored a group of images at a time. A restarted job therefore
skips the images already stored and draws, for the rest, exactly the noise an uninterrupted run draws: the same
certificates, whatever the rows per forward pass (on a GPU they come from a memory probe) and whichever images
share a pass. A crash costs at most the groups of the last FLUSH_SECONDS.
The job certifies in fp32 unless its config opts in to bf16 (certify.precision, part of the job key);
SMX_COMPILE=1 (or true, yes, on) in a worker's environment opts in to torch.compile for its jobs
(docs/performance.md: it pays for itself only on long runs). The most rows of a forward pass come from
SMX_CERTIFY_BATCH_SIZE=N in the worker's environment, else from the spec's certify.batch_size (a runtime setting,
outside the key: the certificates do not depend on it), else from the device (smoothing.forward_batch_size).
A job first copies the certificates it needs that another certify job of the same trained model and CERTIFY
settings stored already (reuse_certificates): a spec that certifies more images, or other ones, certifies only
the images no job has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert, select

from smx.db.models import Certificate as CertificateRow
from smx.db.models import Job, JobParent
from smx.db.store import Store
from smx.errors import UserError
from smx.science.catalog import DATASETS
from smx.science.data import images_and_labels, load_dataset, strided_indices
from smx.science.smoothing import (
    Certificate,
    certify_dataset,
    forward_batch_size,
    images_per_sync,
    missing_cxx_compiler,
    prepare_for_certification,
)
from smx.spec import config_value
from smx.tasks import checkpoints
from smx.tasks.flags import environment_count, environment_flag
from smx.tasks.progress import ProgressReporter

FLUSH_SECONDS = 2.0
PROGRESS_LOG_IMAGES = 100  # a line in the job's log every this many certified images
# Settings of a certify job that its images' certificates do not depend on: which other images it certifies (each
# image's noise comes from the seed and the image's index), and, in the configs of jobs planned before it became a
# runtime setting, how many rows share a forward pass.
PER_JOB_SETTINGS = ("batch_size", "max_samples", "skip")
CERTIFICATE_COLUMNS = ("sample_index", "label", "prediction", "radius", "correct", "pa_lower", "count", "seconds")


def run(store: Store, job: Job, device: str, progress: ProgressReporter) -> None:
    config = job.config
    certify_config, dataset = config["certify"], config["data"]["dataset"]
    compile_model = environment_flag("SMX_COMPILE")
    batch_size_override = environment_count("SMX_CERTIFY_BATCH_SIZE")
    with store.session() as session:
        train_key = session.scalar(select(JobParent.parent_key).where(JobParent.child_key == job.key))
        train_job = session.get(Job, train_key)
        arch, seed = train_job.config["model"]["arch"], train_job.config.get("seed", 0)
        done = set(session.scalars(select(CertificateRow.sample_index).where(CertificateRow.job_key == job.key)))

    model = checkpoints.trained_model(store, job.key, train_key, arch, dataset)
    if model is None:
        return
    model = prepare_for_certification(model, device, compile_model=compile_model)

    data = load_dataset(dataset, certify_config["split"], root=job.runtime.get("data_root"),
                        download=job.runtime.get("download", False))
    indices = strided_indices(len(data), certify_config["skip"], certify_config["max_samples"])
    for source, reused in reuse_certificates(store, job, train_key, [index for index in indices
                                                                       if index not in done]).items():
        print(f"reused {len(reused)} certificate(s) of job {source[:12]}: the same model and CERTIFY settings",
              flush=True)
        done.update(reused)
    pending: list[Certificate] = []
    last_flush = time.monotonic()
    remaining = [index for index in indices if index not in done]
    certified = len(indices) - len(remaining)
    precision = config_value("certify.precision", config)
    configured = configured_batch_size(job)
    with compile_failure_explained(compile_model):
        batch_size = forward_batch_size(model, DATASETS[dataset].input_shape, batch_size_override or configured,
                                        device, precision)
    resumed = f", resuming after {certified} already certified" if certified else ""
    if batch_size_override:
        bound = f"at most {batch_size_override} from SMX_CERTIFY_BATCH_SIZE" + (
            "" if configured is None else f", for certify.batch_size {configured}")
    else:
        bound = "as the device suits" if configured is None else f"at most {configured} from certify.batch_size"
    print(f"certifying {len(indices)} test images{resumed}; {batch_size} rows per forward pass ({bound})", flush=True)
    if certified:
        progress.resumed(certified / len(indices), f"image {certified}/{len(indices)}")
    group_size = images_per_sync(batch_size, certify_config["n0"] + certify_config["n"])
    groups = [remaining[start:start + group_size] for start in range(0, len(remaining), group_size)]

    def flush() -> None:
        nonlocal last_flush
        with store.session() as session:
            session.add_all(
                CertificateRow(job_key=job.key, sample_index=certificate.index, label=certificate.label,
                               prediction=certificate.prediction, radius=certificate.radius,
                               correct=certificate.correct, pa_lower=certificate.pa_lower, count=certificate.count,
                               seconds=certificate.seconds)
                for certificate in pending
            )
        pending.clear()
        last_flush = time.monotonic()

    def on_certificate(certificate: Certificate) -> None:
        nonlocal certified
        pending.append(certificate)
        certified += 1
        progress(certified / len(indices), f"image {certified}/{len(indices)}")
        if certified % PROGRESS_LOG_IMAGES == 0:
            print(f"{certified}/{len(indices)} images certified", flush=True)

    for group in groups:
        images, labels = images_and_labels(data, group)
        with compile_failure_explained(compile_model):
            certify_dataset(model, images, labels, group, sigma=certify_config["sigma"], n0=certify_config["n0"],
                            n=certify_config["n"], alpha=certify_config["alpha"],
                            batch_size=batch_size, num_classes=DATASETS[dataset].num_classes,
                            on_certificate=on_certificate, device=device, precision=precision, seed=seed)
        if time.monotonic() - last_flush >= FLUSH_SECONDS:
            flush()
    flush()
    if certified % PROGRESS_LOG_IMAGES:
        print(f"{certified}/{len(indices)} images certified", flush=True)
    progress(1.0, f"image {len(indices)}/{len(indices)}")


def configured_batch_size(job: Job) -> int | None:
    """The certify.batch_size of the job's latest submission (None: as the device suits). Jobs planned before it
    became a runtime setting hold it in their config."""
    return job.runtime.get("certify_batch_size", job.config["certify"].get("batch_size"))


def certificate_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What the certificate of one test image depends on, besides the trained model and the image: a certify
    job's config without its PER_JOB_SETTINGS."""
    settings = {key: value for key, value in config["certify"].items() if key not in PER_JOB_SETTINGS}
    return {**settings, "precision": config_value("certify.precision", config), "data": config["data"]}


def reuse_certificates(store: Store, job: Job, train_key: str, indices: list[int]) -> dict[str, list[int]]:
    """Copy into `job` the certificates of these test images that other certify jobs of the same trained model and
    certificate_settings stored, whatever their state (a cancelled job's certificates are whole ones); returns the
    images each of those jobs gave. Only from jobs started after the model's training last ended: a model trained
    again (its checkpoint deleted or damaged) has other weights on a GPU, whose kernels are not bit-reproducible."""
    wanted, needed = certificate_settings(job.config), set(indices)
    copied: dict[str, list[int]] = {}
    with store.session() as session:
        trained_at = session.scalar(select(Job.finished_at).where(Job.key == train_key))
        siblings = session.scalars(
            select(Job).join(JobParent, JobParent.child_key == Job.key)
            .where(JobParent.parent_key == train_key, Job.kind == "certify", Job.key != job.key,
                   Job.started_at >= trained_at)
            .order_by(Job.key)).all()
        for source in (sibling.key for sibling in siblings if certificate_settings(sibling.config) == wanted):
            if not needed:
                break
            rows = [dict(zip(CERTIFICATE_COLUMNS, row), job_key=job.key) for row in session.execute(
                select(*(getattr(CertificateRow, column) for column in CERTIFICATE_COLUMNS))
                .where(CertificateRow.job_key == source)) if row.sample_index in needed]
            if rows:
                session.execute(insert(CertificateRow), rows)
                copied[source] = [row["sample_index"] for row in rows]
                needed -= set(copied[source])
    return copied


@contextmanager
def compile_failure_explained(compiling: bool) -> Iterator[None]:
    """A compiled model's forward passes, with a missing C++ compiler turned into a UserError that names the fix.

    torch.compile compiles at a model's first forward pass (a GPU's memory probe, or the first group's), so that is
    where Inductor finds it has no compiler; every other error passes through as it is.
    """
    try:
        yield
    except Exception as error:
        complaint = missing_cxx_compiler(error) if compiling else None
        if complaint is None:
            raise
        raise UserError(
            f"SMX_COMPILE={os.environ.get('SMX_COMPILE', '')}: torch.compile needs a C++ compiler (g++, or the one "
            f"$CXX names) and found none ({complaint}). Fix: install one, or unset SMX_COMPILE"
        ) from error
