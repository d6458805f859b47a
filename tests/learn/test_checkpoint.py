"""Checkpoints: bit-exact resume, integrity checks, atomic writes, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import struct

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError, InputError
from engine.learn import LearnConfig, Trainer, checkpoint
from engine.learn.device import resolve_execution


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def _equal_params(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _setup(config, case):
    trainer = Trainer(config)
    replay = trainer.make_replay(12)
    image, target, weight = case
    replay.add_case(image, target, weight, n_patches=6)
    return trainer, replay


@pytest.mark.parametrize("precision, flips", [("bf16", ()), ("fp32", (0, 1, 2))])
def test_resume_is_bit_identical(tiny_config, blob_case, tmp_path, precision, flips):
    config = dataclasses.replace(tiny_config, precision=precision, flip_axes=flips)
    image, target, weight = blob_case
    n, k = 8, 3

    torch.manual_seed(5)
    straight, replay_a = _setup(config, blob_case)
    losses_a = straight.train_case(image, target, weight, n, replay=replay_a)
    replay_a.add_case(image, target * 0.5, weight, 2)

    torch.manual_seed(5)
    first, replay_b = _setup(config, blob_case)
    losses_b1 = first.train_case(image, target, weight, k, replay=replay_b)
    path = checkpoint.save(tmp_path / "state.ckpt", first, replay_b, counters={"case": 3, "dice": [0.5, 0.7]})
    first.train_case(image, target, weight, 5, replay=replay_b)  # diverge before loading

    torch.manual_seed(99)  # disturb the global RNG: load must restore it
    resumed = Trainer(dataclasses.replace(config, seed=123))  # other init and generator
    replay_c = resumed.make_replay(12)
    counters = checkpoint.load(path, resumed, replay_c)
    assert counters == {"case": 3, "dice": [0.5, 0.7]}
    losses_c = resumed.train_case(image, target, weight, n - k, replay=replay_c)
    replay_c.add_case(image, target * 0.5, weight, 2)

    assert _equal_params(_params(straight), _params(resumed))
    assert torch.equal(losses_a, torch.cat([losses_b1, losses_c]))
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert torch.equal(replay_a.images, replay_c.images) and replay_a.seen == replay_c.seen
    for sa, sc in zip(straight.optimizer.state.values(), resumed.optimizer.state.values()):
        assert all(torch.equal(sa[key], sc[key]) for key in sa)
    assert resumed.steps_done == n


def test_global_rng_states_restored(tiny_config, tmp_path):
    trainer = Trainer(tiny_config)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    checkpoint.save(tmp_path / "a.ckpt", trainer)
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(10)
    np.random.seed(20)
    random.seed(30)
    checkpoint.load(tmp_path / "a.ckpt", trainer)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_file_format_header(tiny_config, tmp_path):
    path = checkpoint.save(tmp_path / "h.ckpt", Trainer(tiny_config))
    raw = path.read_bytes()
    magic, version, length, digest = struct.unpack_from("<8sIQ32s", raw)
    assert magic == b"DILSEGCK" and version == 1 and length == len(raw) - 52
    assert hashlib.sha256(raw[52:]).digest() == digest
    payload = checkpoint.read(path)
    assert payload["format"] == "dilseg-checkpoint" and payload["version"] == 1
    runs = resolve_execution(tiny_config.concrete(), torch.device("cpu"))[0]  # what the trainer runs
    assert LearnConfig.from_dict(payload["trainer"]["config"]) == runs
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def _trained(config, case, steps=2):
    trainer = Trainer(config)
    trainer.train_case(*case, steps=steps)
    return trainer


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "truncate_header", "append", "empty"])
def test_damaged_checkpoint_raises_and_changes_nothing(tiny_config, blob_case, tmp_path, damage):
    path = checkpoint.save(tmp_path / "s.ckpt", _trained(tiny_config, blob_case))
    raw = bytearray(path.read_bytes())
    if damage == "flip_payload":
        raw[len(raw) // 2] ^= 0x40
    elif damage == "flip_header":
        raw[2] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "truncate_header":
        raw = raw[:30]
    elif damage == "append":
        raw += b"junk"
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    target = _trained(dataclasses.replace(tiny_config, seed=4), blob_case, steps=1)
    before = _params(target)
    with pytest.raises(CheckpointError):
        checkpoint.load(path, target)
    assert _equal_params(before, _params(target)) and target.steps_done == 1


def test_missing_checkpoint(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint.load(tmp_path / "nope.ckpt", Trainer(tiny_config))


def _write_raw(path, payload, version=1):
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path.write_bytes(struct.pack("<8sIQ32s", b"DILSEGCK", version, len(data), hashlib.sha256(data).digest()) + data)


class _Gadget:
    """Not an allowed type under weights_only loading."""


def test_unknown_version_foreign_format_and_unsafe_payload(tiny_config, tmp_path):
    trainer = Trainer(tiny_config)
    _write_raw(tmp_path / "v2.ckpt", {"format": "dilseg-checkpoint", "version": 2}, version=2)
    with pytest.raises(CheckpointError, match="version"):
        checkpoint.load(tmp_path / "v2.ckpt", trainer)
    _write_raw(tmp_path / "other.ckpt", {"format": "something-else", "version": 1})
    with pytest.raises(CheckpointError, match="format"):
        checkpoint.load(tmp_path / "other.ckpt", trainer)
    _write_raw(tmp_path / "evil.ckpt", {"format": "dilseg-checkpoint", "version": 1, "x": _Gadget()})
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        checkpoint.load(tmp_path / "evil.ckpt", trainer)


@pytest.mark.parametrize("fail_at", ["fsync", "replace", "write"])
def test_failed_save_keeps_previous_file(tiny_config, blob_case, tmp_path, monkeypatch, fail_at):
    path = tmp_path / "keep.ckpt"
    checkpoint.save(path, Trainer(tiny_config), counters={"generation": 1})
    old = path.read_bytes()

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    if fail_at == "write":
        real_fdopen = os.fdopen

        class Failing(io.BufferedWriter):
            def write(self, data):
                super().write(data[: len(data) // 2])
                raise OSError(28, "No space left on device")

        def fdopen(fd, mode="r", *args, **kwargs):
            return (
                Failing(real_fdopen(fd, "wb", buffering=0)) if "w" in mode else real_fdopen(fd, mode, *args, **kwargs)
            )

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(CheckpointError, match="previous file is unchanged"):
        checkpoint.save(path, _trained(tiny_config, blob_case), counters={"generation": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert checkpoint.load(path, Trainer(tiny_config)) == {"generation": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.ckpt"]


def test_mismatching_checkpoint_raises_and_changes_nothing(tiny_config, blob_case, tmp_path):
    source = _trained(tiny_config, blob_case)
    path = checkpoint.save(tmp_path / "m.ckpt", source, source.make_replay(8))
    wider = Trainer(dataclasses.replace(tiny_config, base_width=6))
    before = _params(wider)
    with pytest.raises(CheckpointError, match="base_width"):
        checkpoint.load(path, wider)
    assert _equal_params(before, _params(wider))
    same = Trainer(tiny_config)
    other_replay = same.make_replay(9)
    before = _params(same)
    with pytest.raises(CheckpointError, match="capacity"):
        checkpoint.load(path, same, other_replay)
    assert _equal_params(before, _params(same)) and same.steps_done == 0 and len(other_replay) == 0
    bare = checkpoint.save(tmp_path / "bare.ckpt", source)
    with pytest.raises(CheckpointError, match="no replay"):
        checkpoint.load(bare, same, same.make_replay(8))


def test_save_rejects_bad_arguments(tiny_config, tmp_path):
    trainer = Trainer(tiny_config)
    with pytest.raises(InputError):
        checkpoint.save(tmp_path / "x.ckpt", trainer, counters={"obj": object()})
    with pytest.raises(InputError):
        checkpoint.save(tmp_path / "x.ckpt", trainer, counters=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(InputError):
        checkpoint.save(tmp_path / "x.ckpt", "trainer")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        checkpoint.save(tmp_path / "x.ckpt", trainer, replay="buffer")  # type: ignore[arg-type]
    assert not (tmp_path / "x.ckpt").exists()
