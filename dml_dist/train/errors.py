"""Errors that end a training run for a reason the user must see (kept import-light for the CLI)."""


class TrainingStopped(RuntimeError):
    """Training ended early for a reason the user must see (for example a diverging loss)."""
