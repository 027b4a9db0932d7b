"""What a training run is besides its DeepSpeed engine: one ``TrainState``, saved and restored as one.

The engine saves and loads its own state (model, optimizer, scheduler). Everything else that a
resumed run needs in order to continue as the uninterrupted one would sits here:

- ``step``: steps done (the next step to run);
- ``skipped_steps``: steps skipped for a non-finite loss or gradient;
- ``memory``: the cross-batch memory (``losses/memory.py``), the same on every rank;
- ``classes``: rank 0's class source, whose state (the mining service's bank and schedule) is
  a file of the checkpoint (``checkpoint.MINING_STATE``), not part of the engine's client state;
- ``eval_history``: the held-out evaluations up to ``step``. It is kept in the run's
  ``eval.json``, not in the checkpoint: a resume rewinds the run's files to the step
  (``run_directory.rewind_run_files``) and hands the history back to ``load_eval_history``.

``state_dict`` / ``load_state_dict`` are the engine's ``client_state``; ``save_files`` /
``load_files`` write and read the files beside it. The checkpointer (``train/checkpointer.py``)
is handed one ``TrainState`` when the worker is built and calls these four, so no other module
assembles checkpoint state by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dml_dist.eval.result import EvalPoint
from dml_dist.losses.memory import Memory
from dml_dist.mining.client import ClassSource

MINING_STATE = "mining_state.npz"
"""The class source's file in a checkpoint directory (rank 0 writes it)."""


@dataclass
class TrainState:
    """The run's state outside the engine (see the module docstring)."""

    seed: int
    memory: Memory
    classes: ClassSource
    step: int = 0
    skipped_steps: int = 0
    eval_history: list[EvalPoint] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """The engine's ``client_state``: plain values and the memory's CPU tensors."""
        return {
            "step": self.step,
            "seed": self.seed,
            "skipped_steps": self.skipped_steps,
            "memory": self.memory.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; a checkpoint older than ``skipped_steps`` counts none."""
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.memory.load_state_dict(state.get("memory", {}))

    def save_files(self, directory: Path, rank: int) -> None:
        """Rank 0: the class source's state into ``directory`` (nothing when mining is off)."""
        if rank == 0:
            self.classes.save_state(str(directory / MINING_STATE))

    def load_files(self, directory: Path, rank: int) -> None:
        """Rank 0: restore the class source from ``directory`` when the checkpoint holds its state."""
        mining_file = directory / MINING_STATE
        if rank == 0 and mining_file.is_file():
            self.classes.restore_state(str(mining_file))

    def load_eval_history(self, history: list[EvalPoint]) -> None:
        """The evaluations up to ``step``, read back from the rewound ``eval.json``; in place, since
        the evaluator appends to this same list (``train/evaluation.py``)."""
        self.eval_history[:] = [point for point in history if point.step <= self.step]
