"""Fixtures of the learning-core tests: tiny configurations that train in milliseconds."""

from __future__ import annotations

import contextlib

import pytest
import torch

from engine.learn import LearnConfig


@pytest.fixture
def tiny_config() -> LearnConfig:
    """A small, fast configuration (base width 4, depth 2, 16^3 patches)."""
    return LearnConfig(base_width=4, depth=2, patch=(16, 16, 16), batch_size=2, lr=1e-3, sw_batch=2)


@pytest.fixture
def blob_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (20, 24, 22) noisy image holding a bright ball, its mask and unit weights."""
    g = torch.Generator().manual_seed(7)
    d, h, w = 20, 24, 22
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    ball = ((zz - 10) ** 2 + (yy - 12) ** 2 + (xx - 9) ** 2 <= 25).float()
    image = 3.0 * ball + 0.5 * torch.randn((d, h, w), generator=g) + 1.0
    return image, ball, torch.ones_like(ball)


_SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def no_host_reads(monkeypatch):
    """A context manager factory: inside ``with no_host_reads():`` every
    tensor -> host read (``.item()``, ``.cpu()``, ``bool(t)`` ...) raises."""

    @contextlib.contextmanager
    def forbid():
        def boom(*_args, **_kwargs):
            raise AssertionError("host synchronisation in a no-sync path")

        with monkeypatch.context() as m:
            for name in _SYNC_METHODS:
                m.setattr(torch.Tensor, name, boom)
            yield

    return forbid
