"""Every published-model preset builds and runs a small forward pass (eval mode, a 60x80 image at
a 64-pixel test size; the ``*_ms_test`` rows run their TTA with one small extra scale).

PAA, PAA_minimal and the mmdetection ports here; ATSS and Dynamic ATSS in test_zoo_forward.py."""
from __future__ import annotations

import pytest
import torch

import assigndet
from assigndet.zoo import zoo_names

SMALL = ["model.input.min_size_test=64", "model.input.max_size_test=96", "model.tta.scales=[48]",
         "model.tta.scale_ranges=[[0,10000]]"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Large models on a tiny input: one intra-op thread is faster than two on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


NAMES = [n for n in zoo_names() if n.startswith("paa") or n.endswith("_mmdet")]


@pytest.mark.parametrize("name", NAMES)
def test_paa_and_mmdet_preset_builds_and_runs(name):
    torch.manual_seed(0)
    model = assigndet.build_detector(name, overrides=SMALL).eval()
    image = torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)
    with torch.no_grad():
        out = model([image])
    assert len(out) == 1 and set(out[0]) == {"boxes", "scores", "labels"}
    d = out[0]
    assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64
    if len(d["boxes"]):
        # inside the image (mmdetection clips in resized pixels, then divides by the scale: float slack)
        assert (d["boxes"][:, 2] <= 80 + 1e-3).all() and (d["boxes"][:, 3] <= 60 + 1e-3).all()
        assert (d["boxes"] >= 0).all()
        assert d["labels"].max() < 80
