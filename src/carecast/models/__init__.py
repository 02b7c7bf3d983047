"""Outcome tasks, training and validation, the model registry and model cards."""
