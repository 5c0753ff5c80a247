import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("ASSIGNDET_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def load_fixture(name: str):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {path} not available")
    return torch.load(path, weights_only=True)


TINY_OVERRIDES = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.base_width=8",
    "model.backbone.norm=gn",
    "model.backbone.freeze_at=0",
    "model.fpn_channels=16",
    "model.head_convs=1",
    "model.anchor_sizes=[16,32,64,128,256]",
    "model.input.min_size_train=[64]",
    "model.input.max_size_train=128",
    "model.input.min_size_test=64",
    "model.input.max_size_test=128",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY_OVERRIDES)
