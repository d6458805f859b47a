"""Device-resident replay buffer of training patches (DESIGN section 2, step 3).

Public API
----------
``ReplayBuffer(capacity, patch, device="cpu", policy="reservoir",
normalize="robust_zscore", storage_dtype=torch.float32, fg_fraction=0.5, seed=0)``

* ``add_case(image, target, weight, n_patches, residual=None)``: normalise the raw
  ``(D, H, W)`` image with ``normalize`` (the same helper the trainer uses, so pass
  the same mode as the trainer's ``LearnConfig.normalize``), draw ``n_patches``
  foreground-balanced patches with :class:`~engine.learn.sampler.PatchSampler` and
  insert them.
* ``add(images, targets, weights)``: insert ready patches ``(n, pd, ph, pw)`` (or
  ``(n, 1, pd, ph, pw)``) already normalised.
* ``sample(n) -> (image, target, weight)``: ``n`` stored patches drawn uniformly
  with replacement, each ``(n, 1, pd, ph, pw)`` float32 on the buffer's device.
* ``state_dict()`` / ``load_state_dict(state)`` for checkpoints.

Storage is preallocated on ``device`` at construction: three tensors of
``capacity + 1`` patches (the extra row absorbs rejected reservoir insertions so
that no decision has to be read back on the host). Policies:

* ``"fifo"``: the newest ``capacity`` patches are kept (ring buffer).
* ``"reservoir"``: after ``k`` patches were offered, each is held with probability
  ``capacity / k`` (Vitter's algorithm R). The number offered so far (``seen``) is a
  Python int: host-side bookkeeping of inserts, not a device read-back. The random
  slot of each insertion is drawn on the device; when two insertions of one call
  pick the same slot the later one wins, as in the sequential algorithm.

Neither ``add`` nor ``sample`` calls ``.item()``, ``.cpu()`` or anything else that
waits for the device: indices come from a ``torch.Generator`` on ``device``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import CheckpointError, InputError, ShapeError, StateError
from ._checks import as_volume, check_float, check_int, check_patch, check_range, check_same_shape
from .models import NORMALIZE_MODES, normalize_intensity
from .sampler import PatchSampler

__all__ = ["POLICIES", "ReplayBuffer"]

POLICIES = ("reservoir", "fifo")
_STATE_VERSION = 1


class ReplayBuffer:
    """Fixed-capacity buffer of (image, target, weight) patches on one device.

    Args:
        capacity: number of patches held at most.
        patch: ``(pd, ph, pw)`` patch size.
        device: where storage lives (the model's device).
        policy: ``"reservoir"`` or ``"fifo"``.
        normalize: intensity normalisation mode used by :meth:`add_case`.
        window: the ``(clip_lo, clip_hi, mean, std)`` of ``normalize="ct"``.
        storage_dtype: ``torch.float32`` (default), ``torch.bfloat16`` or
            ``torch.float16`` to halve memory; samples are returned as float32.
        fg_fraction: foreground share of the patches :meth:`add_case` draws.
        seed: seed of the buffer's own device generator.
    """

    def __init__(
        self,
        capacity: int,
        patch: Sequence[int],
        device: torch.device | str = "cpu",
        policy: str = "reservoir",
        normalize: str = "robust_zscore",
        window: Sequence[float] | None = None,
        storage_dtype: torch.dtype = torch.float32,
        fg_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.capacity = check_int("capacity", capacity, 1)
        self.patch = check_patch(patch)
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {POLICIES}, got {policy!r}")
        if normalize not in NORMALIZE_MODES:
            raise InputError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if storage_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InputError(f"storage_dtype must be float32, bfloat16 or float16, got {storage_dtype}")
        self.policy = policy
        self.normalize = normalize
        self.window = None if window is None else tuple(float(v) for v in window)
        self.fg_fraction = check_float("fg_fraction", fg_fraction, 0.0, 1.0)
        self.device = torch.device(device)
        self.storage_dtype = storage_dtype
        shape = (self.capacity + 1, *self.patch)  # last row: sink for rejected inserts
        self.images = torch.zeros(shape, dtype=storage_dtype, device=self.device)
        self.targets = torch.zeros(shape, dtype=storage_dtype, device=self.device)
        self.weights = torch.zeros(shape, dtype=storage_dtype, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.size = 0  # patches held
        self.seen = 0  # patches offered so far (reservoir count)
        self._next = 0  # FIFO write position

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ insertion
    def _as_patches(self, x: Any, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 5 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 4 or tuple(x.shape[1:]) != self.patch:
            raise ShapeError(f"{name} must be (n, {', '.join(map(str, self.patch))}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(f"{name} must be floating point, got {x.dtype}")
        return x.to(self.device)

    def _slots(self, n: int) -> torch.Tensor:
        """Storage rows for ``n`` new patches (``capacity`` = discard); no host sync."""
        if self.policy == "fifo":
            slots = (self._next + torch.arange(n, device=self.device)) % self.capacity
            # Only the newest `capacity` of this call survive; older ones go to the sink.
            keep = torch.arange(n, device=self.device) >= n - self.capacity
            return torch.where(keep, slots, torch.full_like(slots, self.capacity))
        count = self.seen + torch.arange(n, device=self.device, dtype=torch.float64)
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        draw = torch.floor(u * (count + 1.0)).long()  # uniform in [0, count]
        slots = torch.where(count < self.capacity, count.long(), draw)
        slots = torch.where(slots < self.capacity, slots, torch.full_like(slots, self.capacity))
        # Sequential semantics: when a later insertion of this call reuses a slot, the
        # earlier one is discarded (sent to the sink row).
        later = torch.triu(slots[:, None] == slots[None, :], diagonal=1).any(dim=1)
        return torch.where(later, torch.full_like(slots, self.capacity), slots)

    def add(self, images: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> None:
        """Insert ``n`` normalised patches, each ``(n, pd, ph, pw)`` or ``(n, 1, pd, ph, pw)``."""
        images = self._as_patches(images, "images")
        targets = self._as_patches(targets, "targets")
        weights = self._as_patches(weights, "weights")
        check_same_shape(images, "images", targets=targets, weights=weights)
        n = images.shape[0]
        if n == 0:
            return
        slots = self._slots(n)
        self.images.index_copy_(0, slots, images.to(self.storage_dtype))
        self.targets.index_copy_(0, slots, targets.to(self.storage_dtype))
        self.weights.index_copy_(0, slots, weights.to(self.storage_dtype))
        if self.policy == "fifo":
            self._next = (self._next + n) % self.capacity
        self.seen += n
        self.size = min(self.capacity, self.size + n)

    def add_case(self, image, target, weight, n_patches: int, residual=None, normalized: bool = False) -> None:
        """Normalise a raw case and store ``n_patches`` patches drawn from it.

        Args:
            image: raw ``(D, H, W)`` image (tensor or ndarray; moved to the device).
            target: ``(D, H, W)`` final training target ``T`` in ``[0, 1]``.
            weight: ``(D, H, W)`` loss weights ``C`` (>= 0).
            n_patches: patches to draw (foreground-balanced; residual-weighted when
                ``residual`` is given).
            residual: optional ``(D, H, W)`` residual map ``|Q - P|``.
            normalized: ``image`` is already normalised (a crop normalised with its
                whole case's statistics).

        Validates everything before changing the buffer.
        """
        n_patches = check_int("n_patches", n_patches, 1)
        image = as_volume(image, "image", device=self.device)
        target = as_volume(target, "target", device=self.device)
        weight = as_volume(weight, "weight", device=self.device)
        check_same_shape(image, "image", target=target, weight=weight)
        check_range(image, "image", float("-inf"), None)
        check_range(target, "target", 0.0, 1.0)
        check_range(weight, "weight", 0.0, None)
        sampler = PatchSampler(
            image if normalized else normalize_intensity(image, self.normalize, window=self.window),
            target,
            weight,
            self.patch,
            residual=residual,
            fg_fraction=self.fg_fraction,
            generator=self.generator,
        )
        self.add(*sampler.sample(n_patches))

    # ------------------------------------------------------------------- sampling
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` patches drawn uniformly with replacement, each ``(n, 1, pd, ph, pw)`` float32.

        Raises :class:`~engine.errors.StateError` when the buffer is empty.
        """
        n = check_int("n", n, 1)
        if self.size == 0:
            raise StateError("the replay buffer is empty; add a case before sampling")
        idx = torch.randint(0, self.size, (n,), generator=self.generator, device=self.device)
        return (
            self.images[idx, None].float(),
            self.targets[idx, None].float(),
            self.weights[idx, None].float(),
        )

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Plain-container state (tensors, ints, strings) of the filled part."""
        return {
            "version": _STATE_VERSION,
            "capacity": self.capacity,
            "patch": list(self.patch),
            "policy": self.policy,
            "normalize": self.normalize,
            "window": None if self.window is None else list(self.window),
            "storage_dtype": str(self.storage_dtype).replace("torch.", ""),
            "fg_fraction": self.fg_fraction,
            "size": self.size,
            "seen": self.seen,
            "next": self._next,
            "images": self.images[: self.size].clone(),
            "targets": self.targets[: self.size].clone(),
            "weights": self.weights[: self.size].clone(),
            "generator": self.generator.get_state(),
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise :class:`CheckpointError` unless ``state`` fits this buffer."""
        try:
            if state["version"] != _STATE_VERSION:
                raise CheckpointError(f"replay state version {state['version']} is not {_STATE_VERSION}")
            for key, mine in (("capacity", self.capacity), ("patch", list(self.patch)), ("policy", self.policy)):
                if state[key] != mine:
                    raise CheckpointError(f"replay buffer {key} differs: checkpoint {state[key]!r}, buffer {mine!r}")
            size = int(state["size"])
            if not 0 <= size <= self.capacity or int(state["seen"]) < size:
                raise CheckpointError(f"replay buffer size {size} / seen {state['seen']} are inconsistent")
            for key in ("images", "targets", "weights"):
                t = state[key]
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != (size, *self.patch):
                    raise CheckpointError(f"replay buffer {key} has the wrong shape")
            if not isinstance(state["generator"], torch.Tensor):
                raise CheckpointError("replay buffer generator state is missing")
        except KeyError as exc:
            raise CheckpointError(f"replay buffer state lacks {exc}") from None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; validates first, so a bad state changes nothing."""
        self.check_state_dict(state)
        size = int(state["size"])
        self.images.zero_()
        self.targets.zero_()
        self.weights.zero_()
        self.images[:size] = state["images"].to(self.device, self.storage_dtype)
        self.targets[:size] = state["targets"].to(self.device, self.storage_dtype)
        self.weights[:size] = state["weights"].to(self.device, self.storage_dtype)
        self.generator.set_state(state["generator"].cpu())
        self.normalize = state["normalize"]
        window = state.get("window")
        self.window = None if window is None else tuple(float(v) for v in window)
        self.fg_fraction = float(state["fg_fraction"])
        self.size = size
        self.seen = int(state["seen"])
        self._next = int(state["next"])
