"""Helpers shared by the command modules (no torch at import time)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError

#: the small preset trained by ``assigndet demo`` on the generated shapes dataset
DEMO_PRESET = "atss_R_18_shapes_5min"


def say(*args: Any, **kw: Any) -> None:
    """print on rank 0 only."""
    from ..utils import is_main_process

    if is_main_process():
        print(*args, **kw, flush=True)


def load_model(cfg, weights: str):
    """The configured detector on ``cfg.device`` in eval mode with ``weights`` loaded (this
    library's files or a released ``.pth``); returns ``(model, LoadReport)``."""
    from ..checkpoints import load_weights
    from ..detectors import build_model
    from ..utils import resolve_device

    model = build_model(cfg.model)
    report = load_weights(model, weights)
    return model.to(resolve_device(cfg.device)).eval(), report


def class_names(cfg, metadata: dict[str, str], num_classes: int) -> list[str]:
    """From the weights' metadata, else the config's validation annotations, else numbers."""
    from ..data import dataset_paths

    def attempt(read) -> Optional[list[str]]:
        try:
            return read()
        except Exception:  # noqa: BLE001  (missing, unreadable or malformed: the next source)
            return None

    ann = dataset_paths(cfg.data, train=False)[1]
    names = attempt(lambda: list(json.loads(metadata["class_names"])))
    if names is None:
        names = attempt(lambda: [c["name"] for c in sorted(json.loads(ann.read_text())["categories"],
                                                            key=lambda c: c["id"])])
    return names if names is not None and len(names) == num_classes else [str(i) for i in range(num_classes)]


def check_weights_file(weights: str) -> None:
    if not Path(weights).is_file():
        raise InputError(f"weights file not found: {weights}")
