"""LearnConfig.precision="auto": bf16 only where the device computes it natively."""

from __future__ import annotations

import torch

from engine.learn import device as dev
from engine.learn.config import LearnConfig
from engine.learn.trainer import Trainer


def _with_flag(monkeypatch, native: bool) -> None:
    dev.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native)


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    _with_flag(monkeypatch, False)
    lc, why = dev.resolve_execution(LearnConfig(), torch.device("cpu"))
    assert lc.precision == "fp32" and "no native bf16" in why
    assert lc.channels_last is True


def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    _with_flag(monkeypatch, True)
    lc, why = dev.resolve_execution(LearnConfig(), torch.device("cpu"))
    assert lc.precision == "bf16" and "natively" in why


def test_a_precision_set_by_the_caller_wins(monkeypatch):
    _with_flag(monkeypatch, False)
    lc, why = dev.resolve_execution(LearnConfig(precision="bf16"), torch.device("cpu"))
    assert lc.precision == "bf16" and "set in LearnConfig" in why


def test_trainer_resolves_auto_for_its_device(monkeypatch):
    _with_flag(monkeypatch, False)
    monkeypatch.setattr("engine.learn.trainer.resolve_execution", dev.resolve_execution)
    t = Trainer(LearnConfig(base_width=4, depth=2, patch=(8, 16, 16), batch_size=2), "cpu")
    assert t.config.precision == "fp32" and t.amp_dtype is None


def test_the_cpu_flag_reader_answers_a_bool():
    dev.cpu_has_native_bf16.cache_clear()
    assert isinstance(dev.cpu_has_native_bf16(), bool)
