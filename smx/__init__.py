"""smx: declarative training and certification of randomized-smoothing classifiers."""

__version__ = "0.1.0"
