"""``dilseg propagate``: proxy mask from a few drawn slices.

    dilseg propagate IMAGE DRAWN -o PROXY [--confidence CONF] [--axis A] [--slices I,J,K]
                     [--extent FIRST,LAST] [--backend native|elastix] [--fusion linear|nearest]
                     [--device cpu|cuda]

IMAGE and DRAWN are volumes of the same shape (NIfTI, NRRD, MetaImage, npz, h5; an npz/h5
DRAWN file is read from its ``label`` array when it has one). Only the drawn slices of
DRAWN carry the mask (binary: 0/1). ``--slices`` lists the drawn slices along the
annotation axis (default: the slices holding any foreground, so pass it to declare a
drawn *empty* slice). ``--axis`` defaults to the axis on which the foreground occupies
the fewest slices (with ``--slices``: the one axis on which all foreground lies in the
listed slices). PROXY (float32 in [0, 1]) and CONF (float32 confidence ``1/(1+d)``) are
written in the format of their suffix with IMAGE's geometry.

Exit status 0 on success, 2 on bad input (the message names the problem).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

__all__ = ["add_parser", "run"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``propagate`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "propagate",
        help="proxy mask from a few drawn slices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="image volume")
    p.add_argument("drawn", help="label volume holding the drawn slices")
    p.add_argument("-o", "--output", required=True, help="proxy mask to write (float32 in [0, 1])")
    p.add_argument("--confidence", default=None, help="also write the confidence map here")
    p.add_argument("--axis", type=int, default=None, help="annotation axis (default: detected)")
    p.add_argument("--slices", type=_int_list, default=None, help="drawn slices, e.g. 10,20,30")
    p.add_argument(
        "--extent",
        type=_int_list,
        default=None,
        help="FIRST,LAST slice of the object: background outside (default: none)",
    )
    p.add_argument("--backend", choices=("native", "elastix"), default="native")
    p.add_argument("--fusion", choices=("linear", "nearest"), default="linear")
    p.add_argument("--device", default="cpu", help="torch device for the native backend (cpu, cuda, cuda:1)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
    return p


def _read_drawn(path: str):
    from ..errors import DataError
    from ..io.volumes import read_volume, volume_format

    if volume_format(path) in ("npz", "h5"):
        try:
            return read_volume(path, key="label")
        except DataError as exc:
            if "no array" not in str(exc):
                raise
    return read_volume(path)


def detect_axis(label: np.ndarray, slices: Optional[list[int]] = None) -> int:
    """The annotation axis of a sparsely drawn label volume (see the module docstring)."""
    from ..errors import InputError

    fg = label != 0
    if not fg.any():
        if slices is None:
            raise InputError("DRAWN holds no foreground: pass --slices (and --axis) to declare drawn empty slices")
        raise InputError("DRAWN holds no foreground: pass --axis to say along which axis --slices lie")
    counts = []
    for a in range(fg.ndim):
        other = tuple(i for i in range(fg.ndim) if i != a)
        held = np.nonzero(fg.any(axis=other))[0]
        counts.append((len(held), a, set(held.tolist())))
    if slices is None:
        best = min(counts)
        ties = [a for n, a, _ in counts if n == best[0]]
        if len(ties) > 1:
            raise InputError(
                f"cannot tell the annotation axis (axes {ties} hold foreground on as many slices): pass --axis"
            )
        return best[1]
    fits = [a for n, a, held in counts if held <= set(slices)]
    if len(fits) != 1:
        raise InputError(f"cannot tell the annotation axis from --slices (axes matching: {fits}): pass --axis")
    return fits[0]


def _numpy_inputs(
    image: np.ndarray, label: np.ndarray, axis: int, slices: Optional[list[int]], extent: Optional[tuple[int, int]]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The image (annotation axis first, float32) and the drawn masks ``{slice: 2D}``,
    validated as :class:`~engine.propagate.ProxyBuilder` validates them (same errors)."""
    from ..errors import InputError, MaskError, NonFiniteError, SliceIndexError

    if not -3 <= axis < 3:
        raise InputError(f"axis={axis} out of range for a 3D volume")
    img = np.ascontiguousarray(np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0))
    if not np.isfinite(img).all():
        raise NonFiniteError("image holds NaN or Inf")
    lab = np.moveaxis(label, axis, 0)
    D = img.shape[0]
    if extent is not None and not 0 <= extent[0] <= extent[1] < D:
        raise SliceIndexError(f"extent ({extent[0]}, {extent[1]}) must satisfy 0 <= first <= last < {D}")
    if slices is None:
        idx = [int(z) for z in np.nonzero(lab.reshape(D, -1).any(1))[0]]
    else:
        bad = [z for z in slices if not 0 <= z < D]
        if bad:
            raise SliceIndexError(f"annotated slice {bad[0]} out of range [0, {D}) on axis {axis % 3}")
        idx = sorted(set(int(z) for z in slices))
    if not idx:
        raise MaskError("no annotated slice: draw at least one slice (or pass annotated=)")
    masks = {}
    for z in idx:
        m = lab[z]
        if m.dtype != np.bool_ and not np.isin(m, (0, 1)).all():
            raise MaskError(f"annotated masks must be binary (0/1); found value {m[~np.isin(m, (0, 1))][0]}")
        masks[z] = np.ascontiguousarray(m, dtype=np.float32)
    if extent is not None:
        outside = [z for z, m in masks.items() if not extent[0] <= z <= extent[1] and m.any()]
        if outside:
            raise SliceIndexError(f"drawn slices {outside} hold foreground outside the extent {extent}")
    return img, masks


def run(args: argparse.Namespace) -> int:
    """Run ``dilseg propagate``; returns the exit status."""
    import time

    from ..errors import DilsegError, InputError, ShapeError
    from ..io.volumes import read_volume, write_volume
    from . import lite

    def fail(msg: str) -> int:
        print(f"dilseg propagate: error: {msg}", file=sys.stderr)
        return 2

    try:
        image = read_volume(args.image)
        drawn = _read_drawn(args.drawn)
        if image.array.ndim != 3:
            raise ShapeError(f"{args.image}: the image must be 3D, got shape {image.array.shape}")
        if drawn.array.shape != image.array.shape:
            raise ShapeError(f"{args.drawn} has shape {drawn.array.shape}, {args.image} has {image.array.shape}")
        label = np.asarray(drawn.array)
        if not (np.issubdtype(label.dtype, np.number) or label.dtype == np.bool_):
            raise InputError(f"{args.drawn}: labels must be numeric, got {label.dtype}")
        axis = args.axis if args.axis is not None else detect_axis(label, args.slices)
        extent = None
        if args.extent is not None:
            if len(args.extent) != 2:
                raise InputError(f"--extent takes FIRST,LAST, got {args.extent}")
            extent = (args.extent[0], args.extent[1])
        if args.slices is not None:
            D = label.shape[axis]
            stray = np.nonzero(np.moveaxis(label != 0, axis, 0).reshape(D, -1).any(1))[0]
            extra = sorted(set(int(z) for z in stray) - set(args.slices))
            if extra:
                raise InputError(
                    f"{args.drawn} holds foreground on slices {extra} of axis {axis % 3}, which --slices does not list"
                )
        if args.backend == "native" and args.device == "cpu" and lite.available():
            # no torch: NumPy and the compiled CPU kernels (engine.propagate.lite)
            img, masks = _numpy_inputs(image.array, label, axis, args.slices, extent)
            others = [a for a in range(3) if a != axis % 3]
            sp = (image.spacing[axis % 3], image.spacing[others[0]], image.spacing[others[1]])
            t0 = time.perf_counter()
            q, c = lite.proxy(img, masks, extent=extent, spacing=sp, fusion=args.fusion)
            seconds = {"register": time.perf_counter() - t0, "propagate": 0.0}
            proxy, conf = np.moveaxis(q, 0, axis), np.moveaxis(c, 0, axis)
            annotated = sorted(masks)
            how = "NumPy + C++ kernels"
        else:
            from .proxy import ProxyBuilder

            builder = ProxyBuilder(
                image.array, axis=axis, backend=args.backend, extent=extent, device=args.device, spacing=image.spacing
            )
            result = builder.propagate(label, args.slices, fusion=args.fusion)
            proxy, conf = result.numpy()
            seconds, annotated, how = result.seconds, list(result.annotated), "torch"
        write_volume(args.output, proxy.astype(np.float32), like=image)
        if args.confidence:
            write_volume(args.confidence, conf.astype(np.float32), like=image)
    except DilsegError as exc:
        return fail(str(exc))
    except (RuntimeError, ValueError) as exc:  # e.g. an unknown torch device string
        return fail(f"{type(exc).__name__}: {exc}")
    if not args.quiet:
        print(
            f"propagated {len(annotated)} drawn slices {annotated} along axis {axis % 3} "
            f"({args.backend}, {args.fusion}, {how}): "
            f"register + propagate {seconds['register'] + seconds['propagate']:.3f} s "
            f"-> {args.output}" + (f", {args.confidence}" if args.confidence else "")
        )
    return 0
