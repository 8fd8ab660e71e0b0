"""Glue from a stored job to the science: one module per job kind.

Each task module has `run(store, job, device, progress)`. Tasks are idempotent and resumable: running one
again after a crash continues from what the store already holds.
"""
