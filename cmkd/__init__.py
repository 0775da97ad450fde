"""cmkd: distributed hyperparameter search for cross-modal knowledge distillation without paired data."""

__version__ = "0.1.0"
