"""The server's stream: images (NIfTI / NRRD files, geometry kept) and their labels in
a folder (``<state>/datastore``), with an index written atomically. The MONAI Label
routes upload and list them, ``/activelearning`` hands out the next image without a
``final`` label, and a ``/v1`` session opened on an image stores its final label at
commit."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import errors as E
from . import codecs as C
from .errors import NotFoundError

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class Datastore:
    """Images and final labels in a folder, with an index file written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        (self.folder / "labels").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._volumes: dict[str, Any] = {}  # image id -> Volume (cache)
        idx = self.folder / "index.json"
        self.index: dict[str, Any] = json.loads(idx.read_text()) if idx.exists() else {"images": {}, "order": []}

    def _write_index(self) -> None:
        from ..io.volumes import atomic_write

        text = json.dumps(self.index, indent=1)
        atomic_write(self.folder / "index.json", lambda tmp: Path(tmp).write_text(text))

    @staticmethod
    def check_id(image_id: str) -> str:
        if not image_id or not _ID.match(image_id):
            raise E.InputError(f"image id must be 1-128 letters, digits, '.', '_' or '-', got {image_id!r}")
        return image_id

    def add_image(self, image_id: str, data: bytes, filename: Optional[str], session: bool = False) -> dict:
        fmt = C.format_of_name(filename)
        vol = C.read_volume_bytes(data, fmt)  # validates before anything is stored
        ext = C.FILE_FORMATS[fmt] if fmt == "nrrd" or data[:2] == b"\x1f\x8b" else ".nii"
        rel = f"images/{image_id}{ext}"
        from ..io.volumes import atomic_write

        atomic_write(self.folder / rel, lambda tmp: Path(tmp).write_bytes(data))
        with self._lock:
            entry = self.index["images"].get(image_id, {"labels": {}})
            entry.update(file=rel, format=fmt, ts=int(time.time()), session=session, name=filename or rel)
            self.index["images"][image_id] = entry
            if image_id not in self.index["order"]:
                self.index["order"].append(image_id)
            self._volumes[image_id] = vol
            self._write_index()
        return entry

    def remove(self, image_id: str) -> None:
        with self._lock:
            entry = self.index["images"].pop(image_id, None)
            if image_id in self.index["order"]:
                self.index["order"].remove(image_id)
            self._volumes.pop(image_id, None)
            self._write_index()
        if entry:
            (self.folder / entry["file"]).unlink(missing_ok=True)

    def entry(self, image_id: str) -> dict:
        e = self.index["images"].get(image_id)
        if e is None:
            raise NotFoundError(f"no image {image_id!r} in the datastore")
        return e

    def volume(self, image_id: str):
        e = self.entry(image_id)
        vol = self._volumes.get(image_id)
        if vol is None:
            vol = C.read_volume_bytes((self.folder / e["file"]).read_bytes(), e["format"])
            self._volumes[image_id] = vol
        return vol

    def save_label(self, image_id: str, tag: str, data: bytes, filename: Optional[str], info: dict) -> dict:
        e = self.entry(image_id)
        fmt = C.format_of_name(filename, e["format"])
        ext = C.FILE_FORMATS[fmt] if fmt == "nrrd" or data[:2] == b"\x1f\x8b" else ".nii"
        (self.folder / "labels" / tag).mkdir(parents=True, exist_ok=True)
        rel = f"labels/{tag}/{image_id}{ext}"
        from ..io.volumes import atomic_write

        atomic_write(self.folder / rel, lambda tmp: Path(tmp).write_bytes(data))
        with self._lock:
            e["labels"][tag] = {"file": rel, "format": fmt, "ts": int(time.time()), "info": info}
            self._write_index()
        return e["labels"][tag]

    def save_mask(self, image_id: str, mask: np.ndarray, tag: str = "final", info: Optional[dict] = None) -> dict:
        """Store a label given as an array (the image's layout) in the image's format and
        geometry, e.g. what a ``/v1`` session on this image committed."""
        e = self.entry(image_id)
        vol = self.volume(image_id)
        fmt = e["format"]
        data = C.write_volume_bytes(np.ascontiguousarray(mask, dtype=np.uint8), vol, fmt)
        return self.save_label(image_id, tag, data, f"{image_id}{C.FILE_FORMATS[fmt]}", info or {})

    def listing(self, base: str) -> dict:
        objects = {}
        for i in self.index["order"]:
            e = self.index["images"][i]
            if e.get("session"):
                continue
            objects[i] = {
                "image": {"ext": Path(e["file"]).suffix, "info": {"ts": e["ts"], "name": e["name"]}},
                "labels": {
                    t: {"ext": Path(v["file"]).suffix, "info": {"ts": v["ts"], **v.get("info", {})}}
                    for t, v in e["labels"].items()
                },
            }
        done = sum(1 for o in objects.values() if "final" in o["labels"])
        return {"name": "dilseg", "total": len(objects), "completed": done, "objects": objects, "base": base}
