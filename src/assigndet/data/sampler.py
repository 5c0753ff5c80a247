"""Deterministic, resumable, distributed batching with aspect-ratio grouping, and the loaders.

Training is iteration based. The *global* batch of iteration ``k`` (``world_size x
batch_size_per_rank`` images with their flip decisions) depends only on ``(seed, k)``; rank ``r``
takes the slice ``[r * b, (r + 1) * b)``. Hence 2 processes x 2 images see exactly the images and
flips of 1 process x 4 images, and resuming at iteration ``k`` is exact.

Epoch ``e`` (a pass over the dataset):

1. ``perm = randperm(N)`` and ``u = rand(M * B)`` from a ``torch.Generator`` seeded by
   ``(seed, e)``; ``B`` is the global batch size, ``M`` the number of batches per epoch.
2. Split ``perm`` by group (aspect ratio h/w >= 1 or < 1), keeping the permuted order.
3. Cut each group into chunks of ``B``; a short last chunk is filled up with the first images of
   the same group (so every batch is full and of one group, and every image is seen per epoch).
4. Order the chunks by the position of their first image in ``perm`` (groups interleave).
5. Slot ``j`` of batch ``m`` is flipped when ``u[m * B + j] < hflip_prob``.
6. With a multi-scale training range ``min_size_train=[lo, hi]``, slot ``j`` of batch ``m`` is
   resized to the short side ``s[m * B + j]``, ``s = randint(lo, hi + 1, (M * B,))`` drawn after
   ``u`` from the same generator; the item is then ``(index, flip, short side)`` and the model's
   transform uses that size (its target carries ``min_size``). The scale is thus a function of
   ``(seed, iteration, slot)`` like the flip, not of a process's RNG: N processes draw exactly
   what one process draws.

``M = sum_g ceil(n_g / B)`` is the same every epoch, so iteration ``k`` is batch ``k % M`` of
epoch ``k // M`` and ``start_iter`` costs one epoch's permutation, not ``k`` batches.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..errors import DatasetError

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A well-spread 64-bit seed from a tuple of ints (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


class TrainBatchSampler:
    """Infinite iterable of this rank's batches, each a list of ``(index, flip)`` -- or of
    ``(index, flip, short side)`` with a multi-scale ``min_size_train``.

    Args:
        group_ids: per-image group (e.g. ``CocoDetection.group_ids``); a global batch never
            mixes groups.
        batch_size_per_rank: images per process per iteration (``b``).
        world_size, rank: the process grid; the global batch has ``world_size * b`` images.
        seed: the only source of randomness besides the iteration number.
        hflip_prob: probability that an image is horizontally flipped.
        aspect_grouping: ``False`` puts every image in one group.
        start_iter: the first iteration yielded (exact resume).
        min_size_train: the model's training short sides, ``[S]`` or ``[lo, hi]`` (inclusive);
            with ``lo < hi`` every slot gets its drawn short side (step 6). None: not drawn.
    """

    def __init__(self, group_ids: Sequence[int], *, batch_size_per_rank: int, world_size: int = 1,
                 rank: int = 0, seed: int = 0, hflip_prob: float = 0.5, aspect_grouping: bool = True,
                 start_iter: int = 0, min_size_train: Sequence[int] | None = None) -> None:
        if len(group_ids) == 0:
            raise ValueError("TrainBatchSampler needs at least one image")
        if batch_size_per_rank < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid batch_size_per_rank={batch_size_per_rank}, "
                             f"world_size={world_size}, rank={rank}")
        if not 0.0 <= hflip_prob <= 1.0 or start_iter < 0:
            raise ValueError(f"invalid hflip_prob={hflip_prob} or start_iter={start_iter}")
        groups = torch.as_tensor(list(group_ids), dtype=torch.int64)
        self.groups = groups if aspect_grouping else torch.zeros_like(groups)
        self.batch_size_per_rank = int(batch_size_per_rank)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.global_batch_size = self.world_size * self.batch_size_per_rank
        self.seed = int(seed)
        self.hflip_prob = float(hflip_prob)
        self.start_iter = int(start_iter)
        self.scale_range = _scale_range(min_size_train)
        B = self.global_batch_size
        _, counts = torch.unique(self.groups, return_counts=True)
        self.batches_per_epoch = int(sum((int(n) + B - 1) // B for n in counts))
        self._cache: tuple[int, list[list[tuple[int, bool]]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[tuple]]:
        """All global batches of ``epoch`` (numbered steps in the module docstring)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        B, M = self.global_batch_size, self.batches_per_epoch
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        # 1. permutation and flip draws
        perm = torch.randperm(len(self.groups), generator=g)  # (N,)
        flips = (torch.rand(M * B, generator=g) < self.hflip_prob).view(M, B)  # (M, B)
        scales = None
        if self.scale_range is not None:
            lo, hi = self.scale_range
            scales = torch.randint(lo, hi + 1, (M, B), generator=g).tolist()  # 6. (M, B)
        # 2.-3. per-group chunks, padded from the group's start
        grouped = self.groups[perm]  # (N,)
        chunks, first_pos = [], []
        for value in torch.unique(grouped):
            pos = torch.nonzero(grouped == value).flatten()  # (n_g,) positions in perm
            members = perm[pos]
            n = len(members)
            for start in range(0, n, B):
                chunks.append(members[torch.arange(start, start + B) % n])  # (B,)
                first_pos.append(int(pos[start]))
        # 4. order by first position in the permutation
        order = sorted(range(len(chunks)), key=first_pos.__getitem__)
        batches = torch.stack([chunks[i] for i in order]).tolist()  # (M, B)
        # 5. flips (6. and short sides)
        result = [list(zip(row, f)) for row, f in zip(batches, flips.tolist())]
        if scales is not None:
            result = [[(i, f, s) for (i, f), s in zip(row, srow)] for row, srow in zip(result, scales)]
        self._cache = (epoch, result)
        return result

    def global_batch(self, iteration: int) -> list[tuple]:
        """The global batch (all ranks) of ``iteration``."""
        epoch, pos = divmod(int(iteration), self.batches_per_epoch)
        return self.epoch_batches(epoch)[pos]

    def __iter__(self) -> Iterator[list[tuple]]:
        lo = self.rank * self.batch_size_per_rank
        hi = lo + self.batch_size_per_rank
        k = self.start_iter
        while True:
            yield self.global_batch(k)[lo:hi]
            k += 1


def _scale_range(min_size_train: Sequence[int] | None) -> tuple[int, int] | None:
    if min_size_train is None or len(min_size_train) == 1:
        return None
    if len(min_size_train) != 2 or not 0 < min_size_train[0] <= min_size_train[1]:
        raise ValueError(f"min_size_train must be [S] or [lo, hi] with 0 < lo <= hi, got {list(min_size_train)}")
    lo, hi = (int(v) for v in min_size_train)
    return None if lo == hi else (lo, hi)


class InferenceBatchSampler:
    """Ordered batches of the strided shard ``rank, rank + world_size, ...`` (no flips)."""

    def __init__(self, num_images: int, *, batch_size: int, world_size: int = 1, rank: int = 0) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid batch_size={batch_size}, world_size={world_size}, rank={rank}")
        self.indices = list(range(rank, num_images, world_size))
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size


class WorkerFailure:
    """A :class:`DatasetError` caught in a DataLoader worker, sent back as data: torch re-raises a
    worker's exception with the whole formatted traceback as its message, so the dataset returns
    this instead (:func:`worker_safe`), :func:`collate` passes it on and the loaders of this module
    raise ``DatasetError(message)`` in the main process: one line naming the file and image."""

    def __init__(self, message: str) -> None:
        self.message = message


def worker_safe(get_item):
    """Decorator of a dataset's ``__getitem__``: inside a DataLoader worker, a DatasetError becomes
    a returned :class:`WorkerFailure` (in the main process it is raised as usual)."""
    @functools.wraps(get_item)
    def wrapper(self, index):
        try:
            return get_item(self, index)
        except DatasetError as e:
            if get_worker_info() is None:
                raise
            return WorkerFailure(str(e))

    return wrapper


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]] | WorkerFailure:
    """``[(image, target), ...]`` -> ``(images, targets)`` as two lists (sizes differ); the first
    :class:`WorkerFailure` of the batch instead when there is one."""
    for item in batch:
        if isinstance(item, WorkerFailure):
            return item
    return [image for image, _ in batch], [target for _, target in batch]


class _Loader(DataLoader):
    """A DataLoader that raises the :class:`WorkerFailure` a worker returned as a DatasetError."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, WorkerFailure):
                raise DatasetError(batch.message)
            yield batch


def _seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    s = _mix(seed, rank, worker_id)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def build_train_loader(dataset: Dataset, *, batch_size_per_rank: int, num_workers: int,
                       world_size: int = 1, rank: int = 0, seed: int = 0, hflip_prob: float = 0.5,
                       aspect_grouping: bool = True, start_iter: int = 0,
                       min_size_train: Sequence[int] | None = None) -> DataLoader:
    """An infinite training DataLoader over ``dataset`` (needs ``group_ids`` when grouping).

    Yields ``(images, targets)`` lists of length ``batch_size_per_rank``; see
    :class:`TrainBatchSampler` for the determinism guarantees (``min_size_train``: the model's
    ``model.input.min_size_train``, whose short sides the sampler then draws). A DatasetError in a
    worker is raised here as the same one-line DatasetError.
    """
    group_ids = getattr(dataset, "group_ids", None)
    if group_ids is None:
        if aspect_grouping:
            raise ValueError("aspect_grouping needs a dataset with a 'group_ids' attribute")
        group_ids = [0] * len(dataset)
    sampler = TrainBatchSampler(group_ids, batch_size_per_rank=batch_size_per_rank,
                                world_size=world_size, rank=rank, seed=seed, hflip_prob=hflip_prob,
                                aspect_grouping=aspect_grouping, start_iter=start_iter,
                                min_size_train=min_size_train)
    return _Loader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                   persistent_workers=num_workers > 0,
                   worker_init_fn=functools.partial(_seed_worker, seed=seed, rank=rank),
                   generator=torch.Generator().manual_seed(_mix(seed, rank) % 2**63))


def build_test_loader(dataset: Dataset, *, batch_size: int, num_workers: int, world_size: int = 1,
                      rank: int = 0) -> DataLoader:
    """An ordered DataLoader over this rank's strided shard (indices ``rank::world_size``)."""
    sampler = InferenceBatchSampler(len(dataset), batch_size=batch_size, world_size=world_size,
                                    rank=rank)
    return _Loader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                   worker_init_fn=functools.partial(_seed_worker, seed=0, rank=rank))
