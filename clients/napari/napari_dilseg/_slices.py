"""What the person drew along the annotation axis, against what the engine has.

Qt-free (numpy only), so it is tested without a viewer. A slice of the drawing
layer is *drawn* when it holds any non-zero label on the annotation axis; a slice
the person marked empty is sent as an all-zero mask (the engine's "no object here").
:class:`SliceBook` keeps a copy of every slice as last sent, so a send carries only
the slices that changed since: new or repainted ones are annotated again, and a
slice whose paint was wiped (and is not marked empty) is erased on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Changes", "SliceBook"]


@dataclass
class Changes:
    """One send: masks to annotate ``{slice: 2D bool mask}`` and slices to erase."""

    annotate: dict[int, np.ndarray] = field(default_factory=dict)
    erase: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.annotate or self.erase)

    def describe(self) -> str:
        parts = []
        drawn = [z for z, m in sorted(self.annotate.items()) if m.any()]
        empty = [z for z, m in sorted(self.annotate.items()) if not m.any()]
        if drawn:
            parts.append("drawn " + ", ".join(map(str, drawn)))
        if empty:
            parts.append("empty " + ", ".join(map(str, empty)))
        if self.erase:
            parts.append("erased " + ", ".join(map(str, sorted(self.erase))))
        return "; ".join(parts) or "nothing changed"


class SliceBook:
    """The drawing of one case on one axis, and the copy of what was last sent.

    Args:
        shape: the volume's shape (the drawing layer's, caller's layout).
        axis: the annotation axis (an array axis of ``shape``).
    """

    def __init__(self, shape: tuple[int, ...], axis: int) -> None:
        if len(shape) != 3 or not 0 <= axis < 3:
            raise ValueError(f"a 3D shape and an axis in 0..2 are needed, got {shape} and {axis}")
        self.shape = tuple(int(n) for n in shape)
        self.axis = int(axis)
        self.empty: set[int] = set()  # slices the person marked as holding no object
        self._sent: dict[int, np.ndarray] = {}  # slice -> bool mask as the engine has it

    @property
    def depth(self) -> int:
        return self.shape[self.axis]

    @property
    def sent(self) -> list[int]:
        """Slices the engine holds an annotation of (drawn or empty), sorted."""
        return sorted(self._sent)

    def _check(self, labels: np.ndarray) -> np.ndarray:
        a = np.asarray(labels)
        if a.shape != self.shape:
            raise ValueError(f"drawing of shape {a.shape}, the case has {self.shape}")
        return a

    def plane(self, labels: np.ndarray, z: int) -> np.ndarray:
        """Slice ``z`` of the drawing as a bool mask (any non-zero label is object)."""
        return np.take(self._check(labels), int(z), axis=self.axis) != 0

    def drawn(self, labels: np.ndarray) -> list[int]:
        """Slices holding any paint."""
        a = self._check(labels)
        others = tuple(d for d in range(3) if d != self.axis)
        return [int(z) for z in np.nonzero((a != 0).any(axis=others))[0]]

    def wanted(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        """What the engine should hold: every drawn slice, and the marked empty ones as zeros."""
        out = {z: self.plane(labels, z) for z in self.drawn(labels)}
        plane = tuple(n for d, n in enumerate(self.shape) if d != self.axis)
        for z in self.empty:
            out.setdefault(z, np.zeros(plane, dtype=bool))
        return out

    def changes(self, labels: np.ndarray) -> Changes:
        """The slices that differ from what was last sent."""
        want = self.wanted(labels)
        ann = {z: m for z, m in sorted(want.items()) if z not in self._sent or not np.array_equal(self._sent[z], m)}
        erase = [z for z in sorted(self._sent) if z not in want]
        return Changes(ann, erase)

    def mark_sent(self, changes: Changes) -> None:
        """Record ``changes`` as applied by the engine (after a successful send)."""
        for z, m in changes.annotate.items():
            self._sent[int(z)] = np.array(m, dtype=bool, copy=True)
        for z in changes.erase:
            self._sent.pop(int(z), None)

    def mark_empty(self, z: int) -> None:
        if not 0 <= int(z) < self.depth:
            raise ValueError(f"slice {z} outside [0, {self.depth - 1}]")
        self.empty.add(int(z))

    def unmark_empty(self, z: int) -> None:
        self.empty.discard(int(z))
