"""napari-dilseg test helpers.

Run by ``make test-napari`` in ``.venv-napari``; pytest-xvfb starts Xvfb for the
session (Qt's xcb platform with Mesa's GL: the vispy canvas needs a real GL context,
which ``QT_QPA_PLATFORM=offscreen`` does not give it). Artifacts (screenshots) go to
``runs/napari/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "runs" / "napari"

if os.environ.get("QT_QPA_PLATFORM") == "offscreen":  # offscreen has no GL for the canvas
    del os.environ["QT_QPA_PLATFORM"]
if not os.environ.get("XDG_RUNTIME_DIR"):  # Qt wants one (root on CI has none)
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="napari-dilseg-xdg-")


def pytest_configure(config):
    if shutil.which("Xvfb") is None and not os.environ.get("DISPLAY"):
        raise pytest.UsageError(
            "Xvfb is not installed and there is no DISPLAY: `make test-napari` installs "
            "Debian's xvfb (see the Makefile's NAPARI_SYSTEM_PACKAGES)"
        )


def tiny_config(steps: int = 3, **kw):
    """A small, quick in-process engine for the phantom tests (2-core CPU)."""
    import engine
    from engine.learn import LearnConfig

    learn = LearnConfig(base_width=4, depth=2, precision="fp32", channels_last=False, patch=(8, 16, 16), batch_size=2)
    return engine.Config(device="cpu", learn=learn, steps=steps, replay_capacity=16, replay_patches_per_case=4, **kw)


def dice(a, b) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


def wait_idle(qtbot, widget, timeout_s: float = 180.0) -> None:
    """Wait for the widget's running engine call; fail with its error if it raised."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=int(timeout_s * 1000))
    if widget.last_error is not None:
        raise AssertionError(f"the widget's call failed: {widget.last_error!r}") from widget.last_error


def mark_extent(qtbot, widget, label, axis: int, k: int) -> tuple[int, int]:
    """Set the proposals per round to ``k`` and mark the object's first and last slice
    along ``axis`` with the widget's buttons, as a person would; returns the extent."""
    from qtpy.QtCore import Qt  # imported after this module has set up the Qt environment

    other = tuple(a for a in range(3) if a != axis)
    zs = np.nonzero(np.asarray(label).any(axis=other))[0]
    first, last = int(zs[0]), int(zs[-1])
    widget.k_spin.setValue(k)
    widget.go_to(first)
    qtbot.mouseClick(widget.first_btn, Qt.LeftButton)
    widget.go_to(last)
    qtbot.mouseClick(widget.last_btn, Qt.LeftButton)
    wait_idle(qtbot, widget)
    return first, last


def paint(layer, axis: int, z: int, mask) -> None:
    """Leave slice ``z`` of the Labels ``layer`` as a person painting label 1 would."""
    index = [slice(None)] * 3
    index[axis] = int(z)
    layer.data[tuple(index)] = (np.asarray(mask) != 0).astype(layer.data.dtype)
    layer.refresh()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    """A shown viewer with the plugin's widget docked from its manifest; the widget
    is shut down (worker, session, engine) before the viewer closes."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 1020)
    dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-dilseg", "dilseg")
    QApplication.processEvents()
    yield viewer, dock_widget, widget
    widget.shutdown()
