"""The three index spaces of a training class, named once, and the one map between them.

- ``bank_pos``: a class's position 0..C-1 among the usable training classes (those the indexed
  loader keeps, ``data.min_images_policy``). The sampler (``data/sampler.py``), random classes,
  the mining service, its class bank and every answer's ``classes`` speak this space.
- ``class_index``: the class's index in the shards' manifest (sorted labels), what
  ``IndexedShards.read`` takes. It equals ``bank_pos`` unless the loader dropped classes.
- ``label``: the integer label stored with the samples: what the loss, the cross-batch memory,
  the violation rate and the evaluation see.

``ClassIds`` holds the loader's table bank_pos -> class_index (``ClassBatchLoader.classes``) and
the shards' table class_index -> label (``IndexedShards.labels``), so code that crosses spaces
says which way it goes instead of indexing a bare list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassIds:
    """``class_index`` by ``bank_pos``, and ``label`` by ``class_index``."""

    class_index: tuple[int, ...]
    label_by_class_index: tuple[int, ...]
    _bank_pos: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bank_pos", {c: pos for pos, c in enumerate(self.class_index)})

    @classmethod
    def of_loader(cls, loader: Any) -> ClassIds:
        """The tables of an indexed loader (its ``classes``, and its ``shards.labels``)."""
        return cls(tuple(int(c) for c in loader.classes), tuple(int(label) for label in loader.shards.labels))

    def class_index_of(self, bank_pos: Sequence[int]) -> list[int]:
        return [self.class_index[p] for p in bank_pos]

    def bank_pos_of(self, class_index: Sequence[int]) -> list[int]:
        return [self._bank_pos[int(c)] for c in class_index]

    def label_of(self, bank_pos: Sequence[int]) -> list[int]:
        return [self.label_by_class_index[self.class_index[p]] for p in bank_pos]
