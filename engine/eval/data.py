"""Where a stream's cases come from and how they split (``StreamConfig.data``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import DataError
from .presets import StreamConfig

__all__ = ["StreamData", "load_stream_data"]


@dataclass
class StreamData:
    """The stream cases and the held-out split (:func:`load_stream_data`)."""

    kind: str  # "la" | "folder" | "phantom"
    where: str
    axis: int
    train_names: list[str]
    test_names: list[str]
    folder: Any = None  # engine.io.CaseFolder, or None for phantoms
    phantom: Optional[tuple] = None  # (seed, shape, axis) of a phantom stream
    variant: str = "none"  # engine.io.variants spec applied to every case

    def __post_init__(self) -> None:
        self._test_cache: Optional[list] = None

    def describe(self) -> str:
        variant = "" if self.variant == "none" else f", variant {self.variant}"
        return (
            f"{self.kind} data ({self.where}{variant}): {len(self.train_names)} stream cases "
            f"{self.train_names[0]}..{self.train_names[-1]}, {len(self.test_names)} held-out "
            f"{self.test_names[0]}..{self.test_names[-1]}, annotation axis {self.axis}"
        )

    def _load(self, name: str, test: bool):
        if self.folder is not None:
            case = self.folder[name]
        else:
            from ..io.phantoms import phantom_case

            seed, shape, axis = self.phantom
            idx = int(name.rsplit("_", 1)[1])
            case = phantom_case((seed + (1 if test else 0), idx), shape, axis)
        if self.variant != "none":
            from ..io.variants import apply_variant

            case = apply_variant(case, self.variant, self.axis)
        if not np.any(case.label):
            raise DataError(f"case {name}: the label is empty; a stream case needs an object")
        return case

    def train_case(self, i: int):
        return self._load(self.train_names[i], test=False)

    def test_cases(self) -> list:
        if self._test_cache is None:
            self._test_cache = [self._load(n, test=True) for n in self.test_names]
        return self._test_cache

    def meta(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "where": self.where,
            "axis": self.axis,
            "train": list(self.train_names),
            "test": list(self.test_names),
        }
        if self.variant != "none":
            out["variant"] = self.variant
        return out


def load_stream_data(cfg: StreamConfig) -> StreamData:
    """Resolve ``cfg.data`` into a :class:`StreamData` (see :class:`StreamConfig`):
    ``auto`` / ``la`` look the shared left-atrium data up with
    :func:`engine.io.default_data_dir` (``$DILSEG_DATA``, then ``../shared/data``)."""
    from ..io import CaseFolder, default_data_dir
    from ..io.dataset import LA_AXIS, LA_DIRNAME

    data = cfg.data
    folder = None
    kind = None
    if data in ("auto", "la"):
        found = default_data_dir()
        if found is not None:
            folder, kind = CaseFolder(found, axis=LA_AXIS), "la"
        elif data == "la":
            raise DataError(f"the left-atrium data ({LA_DIRNAME}) was not found: pass --data DIR or set DILSEG_DATA")
        else:
            kind = "phantom"
    elif data == "phantom":
        kind = "phantom"
    else:
        path = Path(data)
        if not path.is_dir():
            raise DataError(f"--data {data}: no such folder")
        is_la = any(path.glob("la_*.npz")) or any(path.glob("la_*.h5"))  # the shared LA data, 1.25 or 0.625 mm
        folder = CaseFolder(path, axis=LA_AXIS if is_la else None)
        kind = "la" if is_la else "folder"
    if kind == "phantom":
        axis = 0 if cfg.axis is None else cfg.axis
        shape = list(cfg.phantom_shape)
        # phantom_shape lists the annotation axis first; place it at `axis`
        dims = shape[1:]
        dims.insert(axis, shape[0])
        train = [f"phantom_{cfg.seed}_{i}" for i in range(cfg.n_train)]
        test = [f"phantom_{cfg.seed + 1}_{i}" for i in range(cfg.n_test)]
        return StreamData(
            "phantom",
            f"generated, seeds {cfg.seed}/{cfg.seed + 1}, shape {tuple(dims)}",
            axis,
            train,
            test,
            phantom=(cfg.seed, tuple(dims), axis),
            variant=cfg.variant,
        )
    names = folder.names
    if len(names) < cfg.n_train + cfg.n_test:
        raise DataError(
            f"{folder.path}: {len(names)} cases, the preset needs {cfg.n_train} stream + "
            f"{cfg.n_test} held-out cases (use --cases N)"
        )
    axis = cfg.axis if cfg.axis is not None else (folder.axis if folder.axis is not None else 0)
    return StreamData(
        kind,
        str(folder.path),
        axis,
        names[: cfg.n_train],
        names[len(names) - cfg.n_test :],
        folder=folder,
        variant=cfg.variant,
    )
