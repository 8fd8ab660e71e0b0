"""The science: models, data, training methods, randomized smoothing and metrics.

Nothing here knows about specs, the scheduler or the database. Modules that only describe things
(`catalog`, `methods.params`, `metrics`) do not import torch, so that commands that need no model stay fast.
"""
