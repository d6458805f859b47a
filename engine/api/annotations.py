"""The undo-able store of a session's drawings: slice masks and the object's extent.

Keys are ``(internal axis, index)``: internal axis 0 is the session's annotation axis,
1 and 2 the two others in the caller's order. Every change bumps :attr:`stamp` (the
session's caches compare it) and is recorded for :meth:`undo`. The store trusts its
input: the session validates masks and indices at the API boundary.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import errors as E

__all__ = ["AnnotationStore"]

Key = tuple[int, int]
Extent = Optional[tuple[int, int]]


class AnnotationStore:
    """Drawn slices, the extent, an undo history and a change stamp."""

    def __init__(self) -> None:
        self._masks: dict[Key, torch.Tensor] = {}
        self._history: list[tuple[str, Any]] = []
        self._ever: set[Key] = set()
        self.extent: Extent = None
        self.stamp = 0

    # --- reading -------------------------------------------------------------------------
    @property
    def masks(self) -> dict[Key, torch.Tensor]:
        """The current drawings (a shallow copy: the masks themselves are shared)."""
        return dict(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, key: Key) -> bool:
        return key in self._masks

    def __getitem__(self, key: Key) -> torch.Tensor:
        return self._masks[key]

    def keys(self) -> frozenset:
        return frozenset(self._masks)

    def indices(self, axis: int = 0) -> list[int]:
        """Sorted drawn slice indices on internal ``axis``."""
        return sorted(i for (a, i) in self._masks if a == axis)

    def ever_drawn(self, key: Key) -> bool:
        """Whether ``key`` was drawn at any time in this session (undo included)."""
        return key in self._ever

    @property
    def history_length(self) -> int:
        return len(self._history)

    # --- changing ------------------------------------------------------------------------
    def set_extent(self, extent: Extent) -> None:
        self._history.append(("extent", self.extent))
        self.extent = extent
        self.stamp += 1

    def put(self, key: Key, mask: torch.Tensor) -> None:
        """Store the (validated, uint8, contiguous) ``mask`` of slice ``key``."""
        self._history.append(("annotate", (key, self._masks.get(key))))
        self._masks[key] = mask
        self._ever.add(key)
        self.stamp += 1

    def erase(self, key: Key) -> None:
        if key not in self._masks:
            raise E.StateError(f"slice {key[1]} is not annotated on that axis")
        self._history.append(("annotate", (key, self._masks[key])))
        del self._masks[key]
        self.stamp += 1

    def undo(self) -> None:
        """Revert the last :meth:`put` / :meth:`erase` / :meth:`set_extent`."""
        if not self._history:
            raise E.StateError("nothing to undo")
        kind, payload = self._history.pop()
        if kind == "extent":
            self.extent = payload
        else:
            key, previous = payload
            if previous is None:
                self._masks.pop(key, None)
            else:
                self._masks[key] = previous
        self.stamp += 1
