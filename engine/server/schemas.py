"""The types of the ``/v1`` routes: query enums, request bodies, OpenAPI fragments for
binary bodies and frames, and the session state every session route returns."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from . import codecs as C
from .core import ServerState
from .leases import Lease

BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
OPTIONAL_BINARY_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
FRAME_RESPONSE = {
    200: {
        "description": "a dilseg frame (JSON meta + raw array, see engine.server.codecs)",
        "content": {
            C.FRAME_TYPE: {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    304: {"description": "not modified (If-None-Match)"},
}


class DType(str, enum.Enum):
    uint8 = "uint8"
    int8 = "int8"
    uint16 = "uint16"
    int16 = "int16"
    uint32 = "uint32"
    int32 = "int32"
    float32 = "float32"
    float64 = "float64"


class FileFormat(str, enum.Enum):
    nifti = "nifti"
    nrrd = "nrrd"


class OutFormat(str, enum.Enum):
    frame = "frame"
    nifti = "nifti"
    nrrd = "nrrd"


class MaskEncoding(str, enum.Enum):
    u8 = "u8"
    bits = "bits"


class CommitFormat(str, enum.Enum):
    u8 = "u8"
    bits = "bits"
    nifti = "nifti"
    nrrd = "nrrd"


class Extent(BaseModel):
    first: int = Field(ge=0, le=1_000_000)
    last: int = Field(ge=0, le=1_000_000)


def annotated_dict(s: Any) -> dict[str, list[int]]:
    return {str(k): v for k, v in s.annotated.items()}


def session_info(lease: Lease, srv: ServerState) -> dict:
    s = lease.session
    like = lease.like
    geometry = None
    if like is not None:
        geometry = {
            "spacing": list(like.spacing),
            "origin": list(like.origin),
            "direction": np.asarray(like.direction).tolist(),
        }
    return {
        "session_id": lease.id,
        "shape": list(s.shape),
        "axis": s.axis,
        "spacing": list(s.spacing),
        "extent": list(s.extent) if s.extent is not None else None,
        "annotated": annotated_dict(s),
        "rounds": s.rounds,
        "fusion_weight": s.fusion_weight,
        "geometry": geometry,
        "owner": lease.owner,
        "lease": {"idle_timeout_s": srv.limits.idle_timeout_s, "lease_timeout_s": srv.limits.lease_timeout_s},
    }
