"""What a training run reports while it runs, and how it is asked to stop: the metrics log
(``metrics.jsonl`` + TensorBoard), the progress bar, and the SIGINT/SIGTERM stop flag.

Only :mod:`assigndet.engine` builds on this module. Everything here writes on rank 0 only
(the others get no-op objects), so the training loop needs no rank tests around it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from .utils import is_main_process

logger = logging.getLogger("assigndet")

METRICS_FILE = "metrics.jsonl"
_TIMINGS = ("lr", "time", "data_time")  # logged under their own name (as "assign/..." keys), not "loss/..."


class StopFlag:
    """SIGINT/SIGTERM handlers that only set ``signum`` (main thread only; restored on exit).
    A second SIGINT raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        if is_main_process():
            print(f"\nassigndet: received {signal.Signals(signum).name}; stopping after this iteration "
                  "and saving a checkpoint", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _truncate_jsonl(path: Path, start_iter: int) -> None:
    """Drop the lines of ``path`` from iteration ``start_iter`` on (beyond the checkpoint we resume from)."""
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("iteration", -1) < start_iter:
                keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


class MetricsLog:
    """``metrics.jsonl`` + TensorBoard in ``output_dir`` (no-op unless ``enabled``, i.e. rank 0)."""

    def __init__(self, output_dir: Path, start_iter: int, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.path = output_dir / METRICS_FILE
        if not enabled:
            return
        if self.path.exists():
            _truncate_jsonl(self.path, start_iter)
        self.file = open(self.path, "a")
        try:
            # imported here: TensorBoard is optional (and slow to import); training goes on without it
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iter if start_iter else None)
        except Exception as e:  # noqa: BLE001  (tensorboard missing or broken: keep training)
            logger.warning("TensorBoard logging disabled: %s", e)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            it = record["iteration"]
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k if k in _TIMINGS or "/" in k else f"loss/{k}", v, it)

    def log_eval(self, metrics: dict[str, Any], iteration: int) -> None:
        if self.enabled and self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, float) and v >= 0:
                    self.tb.add_scalar(f"eval/{k}", v, iteration)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


class Progress:
    """A tqdm bar on stderr over the iterations (no-op unless ``enabled``); ``close`` is idempotent."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = (tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=1.0,
                         file=sys.stderr) if enabled else None)

    def update(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["METRICS_FILE", "MetricsLog", "Progress", "StopFlag"]
