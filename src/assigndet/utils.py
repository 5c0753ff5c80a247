"""Small helpers shared by the engine, the evaluator, the checkpointer and the CLI.

Nothing here knows about models: process-group setup, device resolution, seeding, atomic file
writes and the few collective operations the training loop needs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, UserError


# --------------------------------------------------------------------------------------- devices
def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` (this process's local rank) if available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} was asked for but CUDA is not available (use device=cpu)")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return device


def to_device(images: Sequence[torch.Tensor], targets: Optional[Sequence[dict]], device: torch.device
              ) -> tuple[list[torch.Tensor], Optional[list[dict]]]:
    """``images`` and the tensors of ``targets`` (None: no targets) on ``device`` (non-blocking)."""
    moved = [im.to(device, non_blocking=True) for im in images]
    if targets is None:
        return moved, None
    return moved, [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                   for t in targets]


# ---------------------------------------------------------------------------------- distributed
def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def status(msg: str) -> None:
    """A status line ``assigndet: msg`` on stderr, from the main process only."""
    if is_main_process():
        print(f"assigndet: {msg}", file=sys.stderr, flush=True)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group described by torchrun's environment variables.

    Does nothing (and returns ``(0, 1)``) when ``WORLD_SIZE`` is unset or 1. The backend is
    ``nccl`` for CUDA devices and ``gloo`` otherwise. Returns ``(rank, world_size)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_dist():
        return get_rank(), get_world_size()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, **kwargs)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if is_dist():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(flag: bool) -> None:
    """Ask torch for deterministic kernels (CUDA needs ``CUBLAS_WORKSPACE_CONFIG``)."""
    if flag:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def get_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch and CUDA, as plain lists/tensors (safe for
    ``torch.load(weights_only=True)``)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------- atomic I/O
#: the hidden temporary files of :func:`atomic_open` (``.NAME.XXXXXXXX.tmp``): one left behind is
#: a save killed mid-way (kill -9, power loss); :func:`remove_stale_tmp` deletes them
TMP_GLOB = ".*.tmp"
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _write_error(path: Path, e: OSError, needed: Optional[int]) -> UserError:
    """One line for an OSError while writing ``path``: the directory, and for a full disk the
    space needed and free."""
    if e.errno in _DISK_FULL:
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
        size = f"{_size(needed)} needed, " if needed else ""
        have = f"{_size(free)} free" if free is not None else "free space unknown"
        return UserError(f"no space left on the device of {path.parent} while writing {path.name} ({size}{have}); "
                         "nothing was replaced")
    return UserError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, size_hint: Optional[int] = None) -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success fsync it and ``os.replace`` it over
    ``path``. On any exception the temporary file is removed and ``path`` is left untouched,
    so readers only ever see the old complete file or the new complete file. The file gets the
    permissions of any new file (0666 minus the umask: 0644 under the usual 022). An OSError
    (a full disk: ENOSPC) becomes a one-line :class:`~assigndet.errors.UserError` naming the
    directory and, for a full disk, the space needed (``size_hint`` bytes) and free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        # os.open with 0o666 lets the kernel apply the umask (mkstemp would give 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e, size_hint) from e
        raise
    _fsync_dir(path.parent)


def remove_stale_tmp(directory: str | os.PathLike) -> tuple[int, int]:
    """Delete the temporary files that killed atomic writes left in ``directory``; returns
    ``(count, bytes)``. Call it only when no save into ``directory`` is running."""
    count = size = 0
    for p in Path(directory).glob(TMP_GLOB):
        with contextlib.suppress(OSError):
            n = p.stat().st_size
            p.unlink()
            count, size = count + 1, size + n
    return count, size


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb", size_hint=len(data)) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, writer: Callable[[Any], None]) -> None:
    """``writer(fileobj)`` writes the content; the file appears atomically."""
    with atomic_open(path, "wb") as f:
        writer(f)
