"""How a run that ends early tells the driver why (kept import-light for the CLI).

A stop the user must act on (a diverging loss) is not a crash: retrying it from a checkpoint
would diverge again. So the workers do not raise: every rank takes the same decision at the same
step, saves the last finite state as a checkpoint and ends its loop normally, with the reason in
that final report under ``STOPPED``. Ray Train then ends the run without a retry, and the
driver raises ``TrainingStopped`` with the reason (``dml-dist`` prints it in one line, exit 1).
"""

STOPPED = "stopped"
"""Key of the final report's metrics that carries why the run stopped (absent when it finished)."""


class TrainingStopped(RuntimeError):
    """Training ended early for a reason the user must see (for example a diverging loss)."""
