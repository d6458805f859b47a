"""Training-step benchmark of the learning core (pytest-benchmark, or a script).

Measures one ``Trainer.step`` on a batch of 2 random patches (forward, loss,
backward, AdamW update) for base widths 8 / 16, patches 32x48x48 / 48x64x64 and
four execution modes: fp32, fp32 + ``channels_last_3d`` (the CPU plan), bf16 autocast,
bf16 autocast + ``channels_last_3d``.
Reports the median ms per step, the peak memory and the bf16/fp32 time ratio
measured in the same run; on GPU also the achieved TFLOP/s (FLOPs of one step
counted once with ``torch.utils.flop_counter.FlopCounterMode``).

Memory: on GPU ``torch.cuda.max_memory_allocated`` over a few steps (model,
optimizer state, activations). On CPU tracemalloc does not see torch's allocator,
so the figure is the growth of the process's peak resident set (``VmHWM`` in
``/proc/self/status``, reset through ``/proc/self/clear_refs`` just before the
configuration is built) over the resident set at that moment, i.e. what building
the trainer, warming up and stepping added at peak. It includes allocator caching
and oneDNN workspaces, so it is an upper bound of the step's working memory; when
earlier configurations freed memory the allocator reuses, it reads low.

Grids: the default is short (base width 8 and 16 on 32x48x48, all three modes:
about a minute on the 2-core CPU). ``DILSEG_BENCH_GRID=full`` adds the 48x64x64
patches. Run as::

    .venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-only -s
    DILSEG_BENCH_GRID=full .venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-only -s
    .venv/bin/python benchmarks/bench_train.py [--full] [--rounds 20]   # interleaved rounds
    .venv/bin/python benchmarks/bench_train.py --norms --threads 2   # dilseg's CPU norm vs torch's

The script form interleaves the configurations round by round, so the bf16/fp32
ratios stay fair when other processes share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.learn import LearnConfig, Trainer  # noqa: E402

MODES = {"fp32": ("fp32", False), "fp32+cl": ("fp32", True), "bf16": ("bf16", False), "bf16+cl": ("bf16", True)}
PATCHES = {"32x48x48": (32, 48, 48), "48x64x64": (48, 64, 64)}
WIDTHS = (8, 16)
BATCH = 2


def grid(full: bool) -> list[tuple[int, str, str]]:
    """``(width, patch name, mode)`` triples of the selected grid."""
    patches = list(PATCHES) if full else ["32x48x48"]
    return [(w, p, m) for p in patches for w in WIDTHS for m in MODES]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Bench:
    """One configuration ready to step."""

    width: int
    patch: str
    mode: str
    trainer: Trainer
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    flops: float = 0.0
    mem_mib: float = float("nan")

    def step(self) -> None:
        self.trainer.step(self.batch)
        _sync(self.trainer.device)


def make_bench(width: int, patch: str, mode: str, warmup: int = 3) -> Bench:
    """Build the trainer and batch of a configuration, warm it up, measure memory."""
    device = _device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _status_kib("VmRSS") if _reset_peak_rss() else None
    precision, channels_last = MODES[mode]
    cfg = LearnConfig(
        base_width=width, patch=PATCHES[patch], batch_size=BATCH, precision=precision, channels_last=channels_last
    )
    trainer = Trainer(cfg, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (BATCH, 1, *PATCHES[patch])
    image = torch.randn(shape, generator=g, device=device)
    target = (torch.rand(shape, generator=g, device=device) > 0.7).float()
    bench = Bench(width, patch, mode, trainer, (image, target, torch.ones_like(target)))
    for _ in range(warmup):  # oneDNN / cuDNN primitive creation happens here
        bench.step()
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            bench.step()
        bench.flops = float(counter.get_total_flops())
    if device.type == "cuda":
        bench.mem_mib = torch.cuda.max_memory_allocated(device) / 2**20
    elif rss_before is not None:
        bench.mem_mib = max(0, _status_kib("VmHWM") - rss_before) / 1024
    return bench


def format_table(rows: list[dict]) -> str:
    """Markdown table with bf16/fp32 ratios against the fp32 row of the same shape
    (from medians, and from minima, which are less sensitive to other processes)."""
    device = _device()
    fp32 = {(r["width"], r["patch"]): r for r in rows if r["mode"] == "fp32"}
    mem = "peak CUDA MiB" if device.type == "cuda" else "peak RSS growth MiB"
    out = [
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, batch {BATCH}",
        "",
        f"| base width | patch | mode | ms/step median | ms/step min | vs fp32 (median) | vs fp32 (min) "
        f"| {mem} | TFLOP/s (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = fp32.get((r["width"], r["patch"]))
        ratio = f"{r['ms'] / base['ms']:.2f}" if base else "-"
        ratio_min = f"{r['ms_min'] / base['ms_min']:.2f}" if base else "-"
        tflops = f"{r['flops'] / (r['ms'] * 1e-3) / 1e12:.2f}" if r.get("flops") else "-"
        out.append(
            f"| {r['width']} | {r['patch']} | {r['mode']} | {r['ms']:.1f} | {r['ms_min']:.1f} | {ratio} "
            f"| {ratio_min} | {r['mem']:.0f} | {tflops} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------- pytest-benchmark
_ROWS: list[dict] = []
_FULL = os.environ.get("DILSEG_BENCH_GRID", "").lower() == "full"


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    if _ROWS:
        text = "\n" + format_table(_ROWS) + "\n"
        plugins = request.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(text)
            return
        with capture.global_and_fixture_disabled():  # show the table without -s
            reporter.write_line(text)


@pytest.mark.parametrize("width, patch, mode", grid(_FULL))
def test_train_step(benchmark, width, patch, mode):
    bench = make_bench(width, patch, mode)
    mem = bench.mem_mib
    rounds = 15 if bench.trainer.device.type == "cpu" else 50
    benchmark.extra_info.update(width=width, patch=patch, mode=mode, peak_mib=mem)
    benchmark.pedantic(bench.step, rounds=rounds, iterations=1, warmup_rounds=2)
    stats = benchmark.stats.stats
    _ROWS.append(
        dict(
            width=width,
            patch=patch,
            mode=mode,
            ms=stats.median * 1e3,
            ms_min=stats.min * 1e3,
            mem=mem,
            flops=bench.flops,
        )
    )


# --------------------------------------------------------------------- script form
def run_interleaved(full: bool, rounds: int) -> list[dict]:
    """Time every configuration once per round, round after round; medians."""
    benches = [make_bench(*key) for key in grid(full)]
    times: list[list[float]] = [[] for _ in benches]
    for _ in range(rounds):
        for i, b in enumerate(benches):
            start = time.perf_counter()
            b.step()
            times[i].append(time.perf_counter() - start)
    return [
        dict(
            width=b.width,
            patch=b.patch,
            mode=b.mode,
            ms=statistics.median(t) * 1e3,
            ms_min=min(t) * 1e3,
            mem=b.mem_mib,
            flops=b.flops,
        )
        for b, t in zip(benches, times)
    ]


def torch_norms(model: torch.nn.Module) -> int:
    """Swap every instance norm of ``model`` for torch's ``nn.InstanceNorm3d`` holding
    the same parameters (the optimiser keeps stepping them); returns how many."""
    from engine.learn.models import InstanceNorm3d

    n = 0
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, InstanceNorm3d):
                ref = torch.nn.InstanceNorm3d(child.num_features, eps=child.eps, affine=True)
                ref.weight, ref.bias = child.weight, child.bias
                setattr(mod, name, ref)
                n += 1
    return n


def run_norms(rounds: int) -> str:
    """The CPU instance norm side by side: one fp32 + channels_last training step
    (width 8, 32x48x48, batch 2, the CPU plan's shape) with dilseg's layer on its C++
    kernel, on the op's reference (``ENGINE_CPU_BACKEND=reference`` around its steps:
    the torch composition the layer ran before the kernel) and with torch's layer,
    interleaved step by step."""
    import os

    a = make_bench(8, "32x48x48", "fp32+cl")
    r = make_bench(8, "32x48x48", "fp32+cl")
    b = make_bench(8, "32x48x48", "fp32+cl")
    swapped = torch_norms(b.trainer.model)
    for _ in range(3):
        b.step()

    def on_reference() -> None:
        os.environ["ENGINE_CPU_BACKEND"] = "reference"
        try:
            r.step()
        finally:
            os.environ.pop("ENGINE_CPU_BACKEND", None)

    on_reference()
    runs = {
        "dilseg InstanceNorm3d, C++ kernel": a.step,
        "dilseg InstanceNorm3d, op reference (torch composition)": on_reference,
        "torch nn.InstanceNorm3d": b.step,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, step in runs.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = med["torch nn.InstanceNorm3d"]
    lines = [
        f"train step, width 8, 32x48x48, batch 2, fp32 + channels_last, {swapped} norm layers, "
        f"threads {torch.get_num_threads()}, {rounds} interleaved steps each",
        "",
        "| norm layer | ms/step median | ms/step min | vs torch |",
        "|---|---|---|---|",
    ]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k]:.1f} | {min(v) * 1e3:.1f} | {base / med[k]:.2f}x |")
    return "\n".join(lines)


def gpu_rows() -> list[dict]:
    """Training-step rows for benchmarks/gpu_table.py (device_check.sh): ms per step,
    TFLOP/s and peak memory for every configuration of the full grid, on the GPU."""
    rows = []
    for r in run_interleaved(full=True, rounds=20):
        tflops = r["flops"] / (r["ms"] * 1e-3) / 1e12 if r.get("flops") else None
        row = {
            "kernel": f"train step w{r['width']} {r['patch']} {r['mode']}",
            "ms": round(r["ms"], 2),
            "note": f"peak {r['mem']:.0f} MiB" if r.get("mem") is not None else "",
        }
        if tflops is not None:
            row["TFLOP/s"] = round(tflops, 2)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Training-step benchmark (interleaved rounds).")
    ap.add_argument("--full", action="store_true", help="also the 48x64x64 patches")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--norms", action="store_true", help="dilseg's CPU instance norm against torch's, side by side")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.norms:
        print(run_norms(args.rounds))
        return 0
    print(format_table(run_interleaved(args.full, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
