"""instance_norm: the segmenter's affine instance norm on the CPU, forward and backward,
in the tensor's own layout (channels_last or contiguous).

For ``x`` ``[N, C, D, H, W]`` and per-channel ``weight``, ``bias`` ``[C]``::

    mean = x.mean((2, 3, 4)),  var = ((x - mean) ** 2).mean((2, 3, 4))   # two passes
    rstd = 1 / sqrt(var + eps),  y = (x - mean) * (rstd * weight) + bias

and, given ``dy``, the backward ``dx = a (dy - mean(dy) - xhat mean(dy xhat))`` with
``a = rstd * weight``, ``xhat = (x - mean) rstd``; ``dweight = sum(dy xhat)``, ``dbias =
sum(dy)`` over ``N`` and the positions. ``mean``, ``rstd`` are ``[N, C]`` float32 (what
the forward returns and the backward takes: the layer saves ``x``, not a centred copy).

Backends (pinned to the reference by tests/ops/test_instance_norm.py):
``reference`` (pure torch: the mean, the centred sum of squares, an ``addcmul``; the
backward in five elementwise passes and two reductions, as
:class:`engine.learn.models.InstanceNorm3d` computed before the kernel), ``cpu``
(C++/OpenMP, csrc/instance_norm/instance_norm_cpu.cpp: forward two reading passes and
one writing, backward two and one; sums in float blocks and double totals, added in a
fixed order). float64 and layouts other than contiguous and channels_last_3d go to the
reference (the kernel's capacity). No GPU kernel: on CUDA the layer calls torch's
``instance_norm`` (cuDNN-free, one fused kernel), and this op serves the reference
with a one-time warning. Not differentiable itself: the layer's autograd Function
calls the two ops.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _common as C
from ._declare import Launch, declare, native

__all__ = [
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_reference",
    "instance_norm_backward_reference",
    "IMPLS",
    "BACKWARD_IMPLS",
]

_DIMS = (2, 3, 4)


# --- reference -------------------------------------------------------------------


def instance_norm_reference(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch forward (the oracle): ``(y, mean [N, C], rstd [N, C])``."""
    n = x[0, 0].numel()
    mean = x.sum(_DIMS, keepdim=True) / n
    xc = x - mean
    rstd = ((xc * xc).sum(_DIMS, keepdim=True) / n + eps).rsqrt()
    y = torch.addcmul(bias.view(1, -1, 1, 1, 1), xc, rstd * weight.view(1, -1, 1, 1, 1))
    N, Cc = x.shape[:2]
    return y, mean.reshape(N, Cc), rstd.reshape(N, Cc)


def instance_norm_backward_reference(
    dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch backward (the oracle): ``(dx, dweight [C], dbias [C])``."""
    n = x[0, 0].numel()
    N, Cc = x.shape[:2]
    m, r = mean.reshape(N, Cc, 1, 1, 1), rstd.reshape(N, Cc, 1, 1, 1)
    xc = x - m
    s1 = dy.sum(_DIMS, keepdim=True)  # per instance: sum(dy)
    s2 = (dy * xc).sum(_DIMS, keepdim=True) * r  # sum(dy * xhat)
    a = r * weight.view(1, -1, 1, 1, 1)
    dx = torch.addcmul((dy - s1 / n) * a, xc, a * r * s2 / -n)
    return dx, s2.sum((0, 2, 3, 4)), s1.sum((0, 2, 3, 4))


# --- kernels ------------------------------------------------------------------------------


def _layout(x: Tensor) -> Optional[bool]:
    """True: channels_last_3d, False: contiguous, None: another layout (the reference)."""
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        return True
    return None


def _supports(t: Tensor, *rest) -> Optional[str]:
    """The kernel's capacity; ``t`` is the first argument (x forward, dy backward)."""
    if t.dtype != torch.float32:
        return f"the kernel is float32; the input is {t.dtype}"
    if _layout(t) is None:
        return f"the input has strides {t.stride()}: neither contiguous nor channels_last_3d"
    if rest and isinstance(rest[0], Tensor) and rest[0].dim() == 5 and _layout(rest[0]) != _layout(t):
        return "dy and x have different layouts"
    return None


def _sizes(x: Tensor) -> tuple[int, int, int]:
    N, Cc = x.shape[:2]
    return N, Cc, x[0, 0].numel()


def _native_forward(on: Launch, x, weight, bias, eps):
    cl = bool(_layout(x))
    N, Cc, S = _sizes(x)
    y = torch.empty_like(x)  # keeps x's layout
    mean = torch.empty((N, Cc), dtype=torch.float32)
    rstd = torch.empty((N, Cc), dtype=torch.float32)
    w, b = weight.contiguous(), bias.contiguous()
    on.mod.instance_norm_forward(
        x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
        N, Cc, S, cl, float(eps), on.last(x, x.numel()),
    )  # fmt: skip
    return y, mean, rstd


def _native_backward(on: Launch, dy, x, mean, rstd, weight):
    cl = bool(_layout(x))
    N, Cc, S = _sizes(x)
    dx = torch.empty_like(x)
    dw = torch.empty(Cc, dtype=torch.float32)
    db = torch.empty(Cc, dtype=torch.float32)
    m, r, w = mean.contiguous(), rstd.contiguous(), weight.contiguous()
    on.mod.instance_norm_backward(
        dy.data_ptr(), x.data_ptr(), m.data_ptr(), r.data_ptr(), w.data_ptr(), dx.data_ptr(), dw.data_ptr(),
        db.data_ptr(), N, Cc, S, cl, on.last(x, x.numel()),
    )  # fmt: skip
    return dx, dw, db


def _fake_forward(x, weight, bias, eps):
    N, Cc = x.shape[:2]
    return torch.empty_like(x), x.new_empty((N, Cc)), x.new_empty((N, Cc))


def _fake_backward(dy, x, mean, rstd, weight):
    Cc = x.shape[1]
    return torch.empty_like(x), x.new_empty((Cc,)), x.new_empty((Cc,))


# --- the declarations (one compiled unit, csrc/instance_norm) -------------------------------------

instance_norm_op = declare(
    "instance_norm",
    "(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)",
    reference=instance_norm_reference,
    kernels=native(_native_forward, supports={"cpu": _supports}, backends=("cpu",)),
    fake=_fake_forward,
)
instance_norm_backward_op = declare(
    "instance_norm_backward",
    "(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor weight) -> (Tensor, Tensor, Tensor)",
    reference=instance_norm_backward_reference,
    kernels=native(_native_backward, supports={"cpu": _supports}, backends=("cpu",)),
    fake=_fake_backward,
    unit="instance_norm",
)

IMPLS = instance_norm_op.impls
BACKWARD_IMPLS = instance_norm_backward_op.impls


# --- public entries -------------------------------------------------------------------------


_DTYPES = (torch.float32, torch.float64)


def _check_x(name: str, x: Tensor) -> None:
    C.check_tensor(name, x, 5, _DTYPES)
    if x.shape[0] < 1 or x.shape[1] < 1 or x[0, 0].numel() < 1:
        raise C.ShapeError(f"{name} must have N, C and D*H*W >= 1, got {tuple(x.shape)}")


def _check_channels(x: Tensor, **vecs: Tensor) -> None:
    for name, v in vecs.items():
        C.check_tensor(name, v, 1, (x.dtype,))
        if v.shape[0] != x.shape[1]:
            raise C.ShapeError(f"{name} must be [C]={x.shape[1]}, got {tuple(v.shape)}")


def instance_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Affine instance norm of ``x`` ``[N, C, D, H, W]`` (module docstring):
    ``(y, mean, rstd)``, ``y`` in ``x``'s layout, ``mean`` / ``rstd`` ``[N, C]``;
    float32 (the kernel) or float64 (the reference: gradcheck), ``weight`` / ``bias``
    of ``x``'s dtype.
    Checks metadata only. Raises ``ShapeError`` / ``DTypeError`` / ``InputError``."""
    _check_x("x", x)
    _check_channels(x, weight=weight, bias=bias)
    if not C.same_device(x.device, weight, bias):
        C.check_same_device(x=x, weight=weight, bias=bias)
    C.check_number("eps", eps, 0.0)
    return instance_norm_op(x, weight, bias, float(eps))


def instance_norm_backward(
    dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`instance_norm` for the output
    gradient ``dy`` (``x``'s shape), from its ``x``, ``mean``, ``rstd`` and ``weight``.
    Checks metadata only. Raises ``ShapeError`` / ``DTypeError`` / ``InputError``."""
    _check_x("x", x)
    C.check_tensor("dy", dy, 5, (x.dtype,))
    if dy.shape != x.shape:
        raise C.ShapeError(f"dy {tuple(dy.shape)} does not match x {tuple(x.shape)}")
    _check_channels(x, weight=weight)
    for name, t in (("mean", mean), ("rstd", rstd)):
        C.check_tensor(name, t, 2, (x.dtype,))
        if tuple(t.shape) != tuple(x.shape[:2]):
            raise C.ShapeError(f"{name} must be [N, C]={tuple(x.shape[:2])}, got {tuple(t.shape)}")
    if not C.same_device(x.device, dy, mean, rstd, weight):
        C.check_same_device(dy=dy, x=x, mean=mean, rstd=rstd, weight=weight)
    return instance_norm_backward_op(dy, x, mean, rstd, weight)
