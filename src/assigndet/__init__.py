"""assigndet: ATSS, PAA, Dynamic ATSS, PAA-RPN Faster R-CNN and IoU-Net, faithful and fast."""
from __future__ import annotations

__version__ = "0.1.0"

from typing import Sequence


def build_detector(name: str, *, weights: str | None = None, overrides: Sequence[str] = ()):
    """Build the detector of preset ``name`` (``assigndet presets`` lists them).

    ``weights``: a ``.safetensors`` file written by assigndet, or a released ``.pth`` of the
    original repositories / mmdetection (SPEC §7), loaded by
    :func:`assigndet.checkpoints.load_weights`; random initialisation when None. With the override ``model.reinit_classifier=true`` a checkpoint of
    another class count loads with a fresh classifier (fine-tuning). ``overrides``: ``key=value`` strings applied to
    the preset's config, e.g. ``["model.num_classes=3"]``. Returns an ``nn.Module`` with
    torchvision's detection contract (labels are 0-based contiguous class indices).
    """
    # imported here, not at the top: ``import assigndet`` must not load torch (the command line
    # sets OMP_WAIT_POLICY before torch starts its thread pool)
    from .checkpoints import load_weights
    from .detectors import build_model
    from .presets import load_config

    cfg = load_config(name, list(overrides))
    model = build_model(cfg.model)
    if weights is not None:
        load_weights(model, weights)  # also released .pth files; model.reinit_classifier
    return model


__all__ = ["build_detector", "__version__"]
