"""Running jobs: the database queue, slot locks, the worker loop and executors."""
