"""The op declarations (engine/ops/_declare.py) and the one backend rule
(engine/ops/_common.py): every op's custom op, fake and backend table come from its
declaration; only the rule chooses, consulting the kernels' capacity predicates;
eager calls that skip the torch dispatcher run the same dispatch as the custom op."""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import engine.ops as O
from engine import _backends
from engine.ops import _common
from engine.ops._declare import registry

from ._oracle import requires_cpu_ext, smooth_field

OPS = [
    "warp2d",
    "warp2d_backward",
    "propagate_chain",
    "confidence_map",
    "slice_residuals",
    "select_slices",
    "demons_step",
    "regularize_field",
    "instance_norm",
    "instance_norm_backward",
]
# CPU-only ops: the segmenter's norm layer calls torch's fused instance_norm on CUDA
# (engine/learn/models.py); this op is the CPU's layout-keeping replacement
CPU_ONLY = {"instance_norm", "instance_norm_backward"}


def test_every_op_is_declared_once_with_its_backends():
    assert sorted(registry) == sorted(OPS)
    kernels = pytest.importorskip("engine.kernels")
    for name, op in registry.items():
        assert op.impls["reference"] is not None
        assert tuple(op.impls) == ("reference",) + op.backends
        assert set(op.backends) <= {"cpu", "cuda", "triton"}
        if name in CPU_ONLY:
            assert op.backends == ("cpu",), name
            continue
        assert "cpu" in op.backends and "triton" in op.backends, name  # every op has both (DESIGN §4)
        assert getattr(torch.ops.dilseg, name).default is not None
        assert not hasattr(kernels, "ops")  # the declaration is the only statement of backends
    for name in ("demons_step", "regularize_field"):
        assert getattr(torch.ops.dilseg, f"{name}_out").default is not None
        assert "cuda" not in registry[name].backends  # Triton serves CUDA tensors


def test_backend_table_reports_what_serves():
    table = O.backend_table()
    assert set(table) == set(OPS)
    for row in table.values():
        assert row["backends"][0] == "reference"
        assert row["cpu"] in ("cpu", "reference") and row["cuda"] in ("cuda", "triton", "reference")


def _all_loaded(monkeypatch):
    monkeypatch.setattr(_common, "_loaded", lambda backend, unit: None)


def test_rule_consults_capacity_and_moves_on_silently(monkeypatch):
    _all_loaded(monkeypatch)
    cm = registry["confidence_map"]
    cuda = torch.device("cuda")
    small, big = [64, 128, 128], [20000, 10, 10]
    a = torch.ones(3, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _common.select("confidence_map", cuda, cm.kernels, (a, None, None, small)) == "cuda"
        assert _common.select("confidence_map", cuda, cm.kernels, (a, None, None, big)) == "triton"
        monkeypatch.setenv("ENGINE_GPU_BACKEND", "cuda")
        assert _common.select("confidence_map", cuda, cm.kernels, (a, None, None, big)) == "reference"
    assert cm.kernels["cuda"].supports(a, None, None, big).startswith("D + H + W = 20020 exceeds")
    ss = registry["select_slices"]
    monkeypatch.setenv("ENGINE_GPU_BACKEND", "auto")
    scores = torch.zeros(40000)
    assert _common.select("select_slices", cuda, ss.kernels, (scores, None, 3, 0, None)) == "triton"
    assert _common.select("select_slices", cuda, ss.kernels, (scores[:100], None, 3, 0, None)) == "cuda"


def test_rule_pins_and_other_devices(monkeypatch):
    _all_loaded(monkeypatch)
    k = registry["warp2d"].kernels
    for choice, want in (("auto", "cuda"), ("cuda", "cuda"), ("triton", "triton"), ("reference", "reference")):
        monkeypatch.setenv("ENGINE_GPU_BACKEND", choice)
        assert _common.select("warp2d", torch.device("cuda"), k) == want
    monkeypatch.setenv("ENGINE_CPU_BACKEND", "reference")
    assert _common.select("warp2d", torch.device("cpu"), k) == "reference"
    monkeypatch.setenv("ENGINE_CPU_BACKEND", "auto")
    assert _common.select("warp2d", torch.device("cpu"), k) == "cpu"
    assert _common.select("warp2d", torch.device("meta"), k) == "reference"
    # demons_step declares no CUDA kernel: Triton serves CUDA tensors
    monkeypatch.setenv("ENGINE_GPU_BACKEND", "auto")
    assert _common.select("demons_step", torch.device("cuda"), registry["demons_step"].kernels) == "triton"


@requires_cpu_ext
def test_empty_volume_through_the_custom_op_is_served_by_the_reference():
    masks = torch.zeros(3, 0, 4)
    f = torch.zeros(2, 2, 0, 4)
    ann = torch.tensor([True, False, False])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a documented routing, not a fallback
        assert registry["propagate_chain"].select(masks, ann, f, f, 0.02, "linear") == "reference"
        out = torch.ops.dilseg.propagate_chain.default(masks, ann, f, f, 0.02, "linear")
    assert out[0].shape == (3, 0, 4) and out[2].tolist() == [0, 1, 2]


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_dispatcher_and_modes_see_the_custom_op():
    src = torch.rand(2, 1, 9, 8)
    u = smooth_field(2, 9, 8, amplitude=2.0)
    direct = O.warp2d(src, u)
    with _Recorder() as rec:
        traced = O.warp2d(src, u)
    assert any("dilseg.warp2d" in n for n in rec.names), rec.names
    assert torch.equal(direct, traced)
    # and the same for an op with an out= variant
    f, m = torch.rand(2, 1, 9, 8), torch.rand(2, 1, 9, 8)
    g = torch.zeros(2, 2, 9, 8)
    out = torch.empty(2, 2, 9, 8)
    O.demons_step(f, m, u, g, 1.0, out=out)
    with _Recorder() as rec:
        out2 = torch.empty(2, 2, 9, 8)
        O.demons_step(f, m, u, g, 1.0, out=out2)
    assert any("dilseg.demons_step_out" in n for n in rec.names), rec.names
    assert torch.equal(out, out2)


def test_direct_and_custom_op_paths_agree_on_every_op():
    src = torch.rand(2, 2, 7, 9)
    u = smooth_field(2, 7, 9, amplitude=2.0)
    q, p = torch.rand(5, 6, 7), torch.rand(5, 6, 7)
    ann = torch.tensor([False, True, False, False, True])
    fields = smooth_field(4, 6, 7, amplitude=1.0)
    cases = {
        "warp2d": (src, u, "bilinear", "border"),
        "propagate_chain": (q, ann, fields, fields, 0.02, "linear"),
        "confidence_map": (ann, None, torch.tensor([True, False]), [5, 3, 2]),
        "slice_residuals": (q, p, None),
        "select_slices": (q.sum((1, 2)), ann, 2, 1, None),
        "demons_step": (src[:, :1], src[:, 1:], u, u * 0.1, 1.0),
        "regularize_field": (u, u * 0.5, 1.0, 0.1, 1),
    }
    for name, args in cases.items():
        op = registry[name]
        a, b = op(*args), op.custom_op(*args)
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        for x, y in zip(a, b):
            assert torch.equal(x, y), name


def test_autograd_goes_through_the_custom_op():
    src = torch.rand(1, 1, 6, 7, requires_grad=True)
    u = smooth_field(1, 6, 7, amplitude=1.0).requires_grad_()
    O.warp2d(src, u).sum().backward()
    assert src.grad is not None and u.grad is not None


def test_no_backend_module_warns_once(monkeypatch):
    monkeypatch.setenv("ENGINE_NO_EXTENSION", "1")
    _backends.reset()
    with pytest.warns(RuntimeWarning, match="slice_residuals on CPU falls back to the pure-torch reference"):
        O.slice_residuals(torch.rand(2, 3, 4), torch.rand(2, 3, 4))
