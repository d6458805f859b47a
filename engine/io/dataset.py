"""Folders of labelled cases: discovery, lazy loading, the shared LA data.

:class:`CaseFolder` finds the cases in a folder from file names alone and reads a
case only when it is indexed. Supported file types are those of
:mod:`engine.io.volumes` (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``,
``.npz``, ``.h5``, ``.hdf5``).

Naming rules (case names are sorted; a name may come from one rule only)
-----------------------------------------------------------------------
1. **Container per case** (the shared left-atrium layout): a top-level ``.npz``
   or ``.h5``/``.hdf5`` file holding both an ``image`` and a ``label`` array.
   Case name = file stem (``la_007.npz -> "la_007"``).
2. **Suffix pairs**: top-level ``<name>_image.<ext>`` and ``<name>_label.<ext>``
   (the two may use different extensions). Case name = ``<name>``.
3. **Folder pairs**: ``images/<name>.<ext>`` and ``labels/<name>.<ext>``.
4. **Folder per case** (the UA-MT layout, ``<CASE_ID>/mri_norm2.h5``): a
   subfolder (other than ``images``/``labels``) holding exactly one container as
   in rule 1. Case name = subfolder name.

An image without its label under rules 2 and 3 is an error (a silently dropped
case would skew an evaluation), and so is a label without its image. Other
files (README, manifest.csv, containers without both keys) are ignored.

A :class:`Case` holds ``image`` float32 and ``label`` uint8 (1 = object: by
default every non-zero label voxel, or ``label == label_value``), both in the
file's array order (see :mod:`engine.io.volumes`), and the spacing per array
axis. ``Case.axis`` is the annotation axis when the source knows it (2 for the
shared left-atrium data via :func:`la_folder`), else None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ..errors import DataError, InputError, ShapeError
from .volumes import SUPPORTED_SUFFIXES, Volume, read_arrays, read_volume, split_name

__all__ = ["Case", "CaseFolder", "default_data_dir", "la_folder", "LA_DIRNAME", "LA_AXIS"]

#: Folder name of the shared left-atrium data.
LA_DIRNAME = "la_lgemri_2018_half"
#: Annotation axis of the shared left-atrium data (the 44-slice axis).
LA_AXIS = 2

_CONTAINERS = {".npz", ".h5", ".hdf5"}


@dataclass(eq=False)  # holds arrays: compare fields explicitly
class Case:
    """One labelled volume.

    Attributes:
        name: case name (from the file name, or ``phantom_...``).
        image: float32, shape ``(n0, n1, n2)``.
        label: uint8 in {0, 1}, same shape as ``image``.
        spacing: voxel size per array axis (mm), 3 floats.
        axis: the annotation axis if the source defines one, else None.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]
    axis: Optional[int] = field(default=None)

    def __post_init__(self) -> None:
        if self.image.shape != self.label.shape:
            raise ShapeError(f"case {self.name}: label shape {self.label.shape} != image shape {self.image.shape}")
        if len(self.spacing) != self.image.ndim:
            raise ShapeError(f"case {self.name}: {len(self.spacing)} spacings for a {self.image.ndim}D image")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


@dataclass(frozen=True)
class _Source:
    """Where one case lives: a container file, or an image file plus a label file."""

    name: str
    image: Path
    label: Optional[Path]  # None: ``image`` is a container holding both arrays


def _has_image_and_label(path: Path) -> bool:
    """Whether an npz/h5 file names both ``image`` and ``label`` (reads the index only)."""
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                keys = set(f.keys())
    except Exception:  # an unreadable file is not a case; it is reported if nothing is found
        return False
    return {"image", "label"} <= keys


def _supported_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and split_name(p)[1])


def _pairs_by_suffix(files: list[Path]) -> tuple[dict, dict]:
    images, labels = {}, {}
    for p in files:
        stem, _ = split_name(p)
        for tag, table in (("_image", images), ("_label", labels)):
            if stem.endswith(tag) and len(stem) > len(tag):
                name = stem[: -len(tag)]
                if name in table:
                    raise DataError(f"{p}: two files for {tag[1:]} of case {name!r}: {table[name].name} and {p.name}")
                table[name] = p
    return images, labels


def _pairs_by_folder(folder: Path) -> tuple[dict, dict]:
    tables = []
    for sub in ("images", "labels"):
        table: dict[str, Path] = {}
        if (folder / sub).is_dir():
            for p in _supported_files(folder / sub):
                stem, _ = split_name(p)
                if stem in table:
                    raise DataError(f"{p}: two files named {stem!r} in {folder / sub}")
                table[stem] = p
        tables.append(table)
    return tables[0], tables[1]


def _match(images: dict, labels: dict, where: str) -> list[_Source]:
    lonely = sorted(set(images) ^ set(labels))
    if lonely:
        details = ", ".join(f"{n} ({'no label' if n in images else 'no image'})" for n in lonely[:8])
        raise DataError(f"{where}: unpaired files for cases {details}")
    return [_Source(n, images[n], labels[n]) for n in sorted(images)]


def _case_subfolders(folder: Path) -> list[_Source]:
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name in ("images", "labels") or sub.name.startswith("."):
            continue
        found = [p for p in _supported_files(sub) if split_name(p)[1] in _CONTAINERS and _has_image_and_label(p)]
        if len(found) == 1:
            out.append(_Source(sub.name, found[0], None))
    return out


def _discover(folder: Path) -> list[_Source]:
    files = _supported_files(folder)
    sources: list[_Source] = []
    images, labels = _pairs_by_suffix(files)
    sources += _match(images, labels, f"{folder} (<name>_image / <name>_label)")
    paired = set(images.values()) | set(labels.values())
    for p in files:
        if p not in paired and split_name(p)[1] in _CONTAINERS and _has_image_and_label(p):
            sources.append(_Source(split_name(p)[0], p, None))
    images, labels = _pairs_by_folder(folder)
    sources += _match(images, labels, f"{folder} (images/ + labels/)")
    sources += _case_subfolders(folder)
    seen: dict[str, _Source] = {}
    for s in sources:
        if s.name in seen:
            raise DataError(f"{folder}: case {s.name!r} found twice: {seen[s.name].image} and {s.image}")
        seen[s.name] = s
    return [seen[n] for n in sorted(seen)]


class CaseFolder:
    """The labelled cases of a folder (naming rules in the module docstring).

    Args:
        path: the folder.
        label_value: None: every non-zero label voxel is the object; an int:
            only voxels equal to it.
        axis: annotation axis recorded in every :class:`Case` (0, 1, 2 or None).

    ``len(folder)``, ``folder[i]`` (int, negative allowed) or ``folder["name"]``,
    iteration, ``names`` and ``sources``. Discovery reads file names (and the key
    index of npz/h5 files); the voxels are read on indexing, every time.

    Raises:
        DataError: the folder is missing, holds no case, pairs are incomplete, or
            (on indexing) a file is unreadable or a label's shape differs from its
            image's.
    """

    def __init__(
        self, path: Union[str, os.PathLike], label_value: Optional[int] = None, axis: Optional[int] = None
    ) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
        if axis not in (None, 0, 1, 2):
            raise InputError(f"axis must be 0, 1, 2 or None, got {axis!r}")
        if label_value is not None and not isinstance(label_value, (int, np.integer)):
            raise InputError(f"label_value must be an int or None, got {label_value!r}")
        self.path = folder
        self.label_value = label_value
        self.axis = axis
        self._sources = _discover(folder)
        if not self._sources:
            known = ", ".join(SUPPORTED_SUFFIXES)
            raise DataError(
                f"{folder}: no cases found. Expected *.npz/*.h5 files holding 'image' and "
                f"'label', <name>_image.<ext> + <name>_label.<ext>, images/<name>.<ext> + "
                f"labels/<name>.<ext>, or <case>/<file>.h5 (ext one of {known})"
            )
        self._index = {s.name: i for i, s in enumerate(self._sources)}

    def __len__(self) -> int:
        return len(self._sources)

    def __iter__(self) -> Iterator[Case]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"CaseFolder({str(self.path)!r}, {len(self)} cases)"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._sources]

    @property
    def sources(self) -> list[tuple[str, Path, Optional[Path]]]:
        """``(name, image file, label file or None for a container)`` per case."""
        return [(s.name, s.image, s.label) for s in self._sources]

    def __getitem__(self, key: Union[int, str]) -> Case:
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"no case named {key!r} in {self.path}")
            return self._load(self._sources[self._index[key]])
        if not isinstance(key, (int, np.integer)):
            raise TypeError(f"case index must be an int or a name, got {type(key).__name__}")
        n = len(self)
        if not -n <= key < n:
            raise IndexError(f"case index {key} out of range for {n} cases")
        return self._load(self._sources[int(key) % n])

    def _load(self, src: _Source) -> Case:
        if src.label is None:
            vols = read_arrays(src.image, ("image", "label"))
            image, label = vols["image"], vols["label"]
        else:
            image, label = read_volume(src.image), read_volume(src.label)
        return self._to_case(src, image, label)

    def _to_case(self, src: _Source, image: Volume, label: Volume) -> Case:
        where = src.image if src.label is None else f"{src.image} + {src.label}"
        if image.ndim != 3:
            raise DataError(f"{where}: case {src.name} image is {image.ndim}D, need 3D")
        if label.shape != image.shape:
            raise DataError(
                f"{where}: case {src.name} label shape {label.shape} does not match image shape {image.shape}"
            )
        img = np.ascontiguousarray(image.array, dtype=np.float32)
        if not np.all(np.isfinite(img)):
            raise DataError(f"{where}: case {src.name} image holds NaN or Inf")
        lab = label.array != 0 if self.label_value is None else label.array == self.label_value
        return Case(src.name, img, lab.astype(np.uint8), tuple(image.spacing), self.axis)


# --------------------------------------------------------------------------- LA data


def _is_la_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("la_*.npz"))


def default_data_dir() -> Optional[Path]:
    """The shared left-atrium folder, if it can be found, else None.

    Looked for, in order: ``$DILSEG_DATA`` (the folder itself, or a folder holding
    ``la_lgemri_2018_half``), then ``<repo>/../shared/data/la_lgemri_2018_half``
    with ``<repo>`` the folder above the ``engine`` package, then the same path
    relative to the current directory. A candidate counts when it holds
    ``la_*.npz`` files.
    """
    candidates: list[Path] = []
    env = os.environ.get("DILSEG_DATA", "").strip()
    if env:
        candidates += [Path(env), Path(env) / LA_DIRNAME]
    repo = Path(__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "data" / LA_DIRNAME)
    candidates.append(Path.cwd().resolve().parent / "shared" / "data" / LA_DIRNAME)
    for cand in candidates:
        if _is_la_dir(cand):
            return cand
    return None


def la_folder(path: Union[str, os.PathLike, None] = None) -> CaseFolder:
    """The shared left-atrium cases as a :class:`CaseFolder` with ``axis=2``.

    ``path`` defaults to :func:`default_data_dir`; DataError when it is not found.
    """
    folder = Path(path) if path is not None else default_data_dir()
    if folder is None:
        raise DataError(
            f"left-atrium data not found: set DILSEG_DATA to the {LA_DIRNAME} folder, or "
            f"download it with engine.io.download.download_la2018"
        )
    return CaseFolder(folder, axis=LA_AXIS)
