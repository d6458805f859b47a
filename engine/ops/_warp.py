"""What the pull-back warps share (warp2d; the 3D twin left the product: no caller): argument checks and the autograd
formula through a backward op."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from . import _common as C

MODES = ("bilinear", "nearest")
PADDINGS = ("zeros", "border")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def validate(src: Tensor, u: Tensor, mode: str, padding: str, finite: bool, spatial: int) -> None:
    """``src`` ``[N, C, *S]``, ``u`` ``[N, spatial, *T]`` (``spatial`` = 2 for warp2d):
    metadata only; ``finite``: also scan ``u`` for NaN/Inf (reads
    every value: a device sync on CUDA)."""
    C.check_tensor("src", src, 2 + spatial, FLOAT_DTYPES + (torch.uint8,))
    C.check_tensor("u", u, 2 + spatial, (torch.float32, torch.float64))
    if mode not in MODES:
        C.check_choice("mode", mode, MODES)
    if padding not in PADDINGS:
        C.check_choice("padding", padding, PADDINGS)
    if u.device != src.device:
        C.check_same_device(src=src, u=u)
    if u.shape[0] != src.shape[0] or u.shape[1] != spatial:
        dims = ", ".join(("D", "H", "W")[3 - spatial :])
        raise C.ShapeError(
            f"u must be [N=src.shape[0], {spatial}, {dims}]; got src {tuple(src.shape)}, u {tuple(u.shape)}"
        )
    if src.dtype == torch.uint8 and mode != "nearest":
        raise C.DTypeError("uint8 sources need mode='nearest' (linear interpolation would not be exact in uint8)")
    if min(src.shape[2:]) < 1:
        raise C.ShapeError(f"src must have non-empty spatial size, got {tuple(src.shape)}")
    if finite:
        C.check_finite("u", u)


def autograd(backward_op: Callable[..., Any]) -> tuple[Callable, Callable]:
    """(backward, setup_context) of a warp op ``op(src, u, mode, padding)`` through its
    backward op ``backward_op(grad, src, u, mode, padding, need_src, need_u)``; uint8
    sources (nearest masks) get no gradient."""

    def setup_context(ctx, inputs, output):
        src, u, mode, padding = inputs
        ctx.save_for_backward(src, u)
        ctx.mode, ctx.padding = mode, padding

    def backward(ctx, grad):
        src, u = ctx.saved_tensors
        need_src, need_u = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if src.dtype == torch.uint8:
            need_src = False
        if not (need_src or need_u):
            return None, None, None, None
        gs, gu = backward_op(grad.contiguous(), src, u, ctx.mode, ctx.padding, need_src, need_u)
        return (gs if need_src else None), (gu if need_u else None), None, None

    return backward, setup_context


def pack_grads(gs: Any, gu: Any, src: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The backward ops' outputs: a gradient that was not asked for is an empty tensor."""
    gs = src.new_empty((0,)) if gs is None else gs.to(src.dtype)
    gu = u.new_empty((0,)) if gu is None else gu.to(u.dtype)
    return gs, gu


def enums(mod: Any, mode: str, padding: str) -> tuple[Any, Any]:
    """The compiled module's named interpolation and padding."""
    interp = mod.Interp.Bilinear if mode == "bilinear" else mod.Interp.Nearest
    pad = mod.Padding.Zeros if padding == "zeros" else mod.Padding.Border
    return interp, pad


def fake_backward(grad, src, u, mode, padding, need_src, need_u):
    gs = src.new_empty(src.shape) if need_src else src.new_empty((0,))
    gu = u.new_empty(u.shape) if need_u else u.new_empty((0,))
    return gs, gu
