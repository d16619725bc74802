"""featureflow: how language-model features emerge, persist and disappear through fine-tuning and merging.

The library (this package, minus `definitions.py`) is plain Python and PyTorch; Dagster wiring lives
in `featureflow_dagster.assets` and `featureflow_dagster.resources`."""

__version__ = "0.1.0"
