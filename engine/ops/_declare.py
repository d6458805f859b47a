"""One declaration per op: from it come the torch custom op, its fake, the backend
table and the dispatch.

An op module declares its op once::

    warp2d_op = declare(
        "warp2d", "(Tensor src, Tensor u, str mode, str padding) -> Tensor",
        reference=warp2d_reference,                       # the oracle and the last fallback
        kernels={**native(_native_forward), "triton": Kernel(_triton_forward)},
        fake=_fake, autograd=...)

and its public entry validates, then calls ``warp2d_op(src, u, mode, padding)``. From the
declaration:

* ``dilseg::<name>``: a ``torch.library`` custom op with that schema, the fake for
  ``torch.compile`` and, when given, an autograd formula; with ``out=True`` also
  ``dilseg::<name>_out``, the same arguments plus a mutated ``out`` buffer (returns
  nothing), for loops that reuse their output.
* ``impls``: the backend table, ``{"reference": ..., "cpu": ..., ...}``, each entry
  callable with the op's arguments (tests pin every entry to the reference).
* dispatch: every call goes through the one backend rule (:func:`engine.ops._common.select`),
  which consults each kernel's ``supports`` predicate; nothing else chooses. CUDA
  kernels run under a device guard of their tensors' device.

``native(fn)`` turns one adapter ``fn(launch, *args)`` into the ``cpu`` and ``cuda``
kernels: the compiled modules ``engine._C`` / ``engine._C_cuda`` expose the same
functions with the same arguments, except the last one (``Launch.last``): the OpenMP
thread count on the CPU, the current CUDA stream on the GPU.

Eager calls on plain tensors skip the torch dispatcher (~15 us a call on the 2-core
CPU, more than some kernels take) and call the dispatch directly; the custom op serves
everything else: ``torch.compile`` tracing, tensor subclasses (fake tensors), torch
dispatch / function modes, functorch transforms, the profiler, and calls that need
autograd. Both paths run the same dispatch (tested).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from .. import _backends
from . import _common as C
from ._common import Kernel

__all__ = ["Kernel", "Launch", "CPU", "CUDA", "native", "declare", "Op", "registry", "triton_module"]

# Output elements per CPU thread below which fewer threads are used: a parallel
# region costs more than it saves on tiny inputs (and stalls on a loaded machine).
CPU_GRAIN = 1 << 15


class Launch:
    """Where a compiled kernel runs: the module that holds it and the argument that
    ends every call into it (``last``)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    @property
    def mod(self) -> Any:
        return _backends.load(self.backend)

    def last(self, t: Tensor, work: Optional[int] = None) -> int:
        """CPU: the OpenMP thread count (torch's intra-op count; with ``work``, the
        number of output elements, at most one thread per ``CPU_GRAIN`` of them).
        CUDA: the current stream of ``t``'s device, as an integer."""
        if self.backend == "cpu":
            n = max(1, torch.get_num_threads())
            return n if work is None else max(1, min(n, work // CPU_GRAIN))
        return torch.cuda.current_stream(t.device).cuda_stream

    def dtype(self, dtype: torch.dtype) -> Any:
        """The compiled module's named element type for a torch dtype."""
        names = {
            torch.float32: "Float32",
            torch.float64: "Float64",
            torch.float16: "Float16",
            torch.bfloat16: "BFloat16",
            torch.uint8: "UInt8",
        }
        if dtype not in names:
            raise C.DTypeError(f"no kernel for dtype {dtype}")
        return getattr(self.mod.DType, names[dtype])

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Launch({self.backend!r})"


CPU = Launch("cpu")
CUDA = Launch("cuda")


def native(
    fn: Callable[..., Any],
    supports: Optional[Mapping[str, Callable[..., Optional[str]]]] = None,
    backends: tuple[str, ...] = ("cpu", "cuda"),
) -> dict[str, Kernel]:
    """The compiled kernels (``cpu`` and ``cuda``, or the ``backends`` named) of one
    adapter ``fn(launch, *args)``; ``supports``: per-backend capacity predicates
    (``{"cuda": pred}``)."""
    supports = supports or {}
    launches = {"cpu": CPU, "cuda": CUDA}
    return {b: Kernel(partial(fn, launches[b]), supports.get(b)) for b in backends}


def triton_module() -> Any:
    """The Triton kernels (``engine.kernels``), loaded on first use."""
    return _backends.load("triton")


# the checks of Op._direct, looked up once (functions, not flags: they read the state now)
_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack
_functorch_level = torch._C._functorch.peek_interpreter_stack
_profiling = torch.autograd._profiler_enabled
_grad_enabled = torch.is_grad_enabled


def _device_of(args: tuple) -> torch.device:
    for a in args:
        if isinstance(a, Tensor):
            return a.device
    raise C.InputError("an op needs at least one tensor argument")


registry: dict[str, "Op"] = {}


class Op:
    """A declared op; see the module docstring. Call it with the schema's arguments."""

    def __init__(
        self,
        name: str,
        schema: str,
        *,
        reference: Callable[..., Any],
        kernels: Mapping[str, Kernel],
        fake: Callable[..., Any],
        unit: Optional[str] = None,
        out: bool = False,
        autograd: Optional[tuple[Callable, Callable]] = None,
    ) -> None:
        unknown = set(kernels) - set(C.BACKEND_ORDER)
        if unknown:
            raise ValueError(f"{name}: unknown backends {sorted(unknown)}")
        self.name = name
        self.unit = unit or name
        self.schema = schema
        self.kernels = {b: kernels[b] for b in C.BACKEND_ORDER if b in kernels}
        self.backends = tuple(self.kernels)
        self.impls: dict[str, Callable[..., Any]] = {
            "reference": reference,
            **{b: k.fn for b, k in self.kernels.items()},
        }
        self.differentiable = autograd is not None
        self.custom_op = torch.library.custom_op(f"dilseg::{name}", self.dispatch, mutates_args=(), schema=schema)
        self.custom_op.register_fake(fake)
        if autograd is not None:
            backward, setup_context = autograd
            self.custom_op.register_autograd(backward, setup_context=setup_context)
        self.out_op = None
        if out:
            params, _ = schema.rsplit("->", 1)
            out_schema = f"{params.rstrip()[:-1]}, Tensor(a!) out) -> ()"
            self.out_op = torch.library.custom_op(
                f"dilseg::{name}_out", self._dispatch_out, mutates_args=("out",), schema=out_schema
            )
            self.out_op.register_fake(lambda *args: None)
        registry[name] = self

    # --- the rule and the dispatch ---------------------------------------------------------
    def select(self, *args: Any) -> str:
        """The backend that serves these arguments now (the rule of engine.ops._common)."""
        return C.select(self.name, _device_of(args), self.kernels, args, self.unit)

    def serves(self, backend: str, device: Any) -> bool:
        """Whether ``backend`` is declared and loaded for ``device`` tensors (benchmarks, reports)."""
        if backend == "reference":
            return True
        if backend not in self.kernels:
            return False
        dev = torch.device(device)
        order = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}.get(dev.type, ())
        return backend in order and C._loaded(backend, self.unit) is None

    def dispatch(self, *args: Any) -> Any:
        """Select a backend for ``args`` and run it (the custom op's implementation)."""
        dev = _device_of(args)
        b = C.select(self.name, dev, self.kernels, args, self.unit)
        fn = self.impls[b]
        if dev.type == "cuda" and b != "reference":
            with torch.cuda.device(dev):  # kernels launch on the current device
                return fn(*args)
        return fn(*args)

    def _dispatch_out(self, *args: Any) -> None:
        self.dispatch(*args)

    # --- calls -----------------------------------------------------------------------------
    def _direct(self, args: tuple) -> bool:
        """Whether an eager call may skip the torch dispatcher (module docstring): not
        when an input requires grad (the custom op then applies the op's autograd
        formula, or, for ops without one, sees detached inputs)."""
        if _compiling() or _dispatch_modes() or _function_modes() or _functorch_level() is not None or _profiling():
            return False
        grad = _grad_enabled()
        for a in args:
            if isinstance(a, Tensor) and (type(a) is not Tensor or (grad and a.requires_grad)):
                return False
        return True

    def __call__(self, *args: Any) -> Any:
        if self._direct(args):
            return self.dispatch(*args)
        if not self.differentiable:  # no autograd formula: the custom op sees no graph
            args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        return self.custom_op(*args)

    def call_out(self, *args: Any) -> None:
        """The ``out=`` variant: the op's arguments, then the buffer to write."""
        if self._direct(args):
            self.dispatch(*args)
        else:
            self.out_op(*args)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Op(dilseg::{self.name}, backends={('reference',) + self.backends})"


def declare(name: str, schema: str, **kw: Any) -> Op:
    """Declare ``dilseg::<name>``; see :class:`Op` and the module docstring."""
    return Op(name, schema, **kw)


def table() -> dict[str, dict[str, Any]]:
    """Every declared op: its backends and which one serves CPU / CUDA tensors now."""
    out = {}
    for name, op in registry.items():
        row: dict[str, Any] = {"backends": ("reference",) + op.backends}
        for dev in ("cpu", "cuda"):
            served = [b for b in ({"cpu": ("cpu",), "cuda": ("cuda", "triton")}[dev]) if op.serves(b, dev)]
            row[dev] = served[0] if served else "reference"
        out[name] = row
    return out
