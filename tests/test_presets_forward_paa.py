"""Every published-model preset builds and runs a small forward pass (eval mode, a 60x80 image at
a 64-pixel test size; the ``*_ms_test`` rows run their TTA with one small extra scale).

PAA, PAA_minimal and the mmdetection ports here; ATSS and Dynamic ATSS in test_zoo_forward.py."""
from __future__ import annotations

import pytest
from conftest import check_preset_runs

from assigndet.presets import zoo_names

pytestmark = pytest.mark.usefixtures("one_thread")  # large models on a tiny input

NAMES = [n for n in zoo_names() if n.startswith("paa") or n.endswith("_mmdet")]


@pytest.mark.parametrize("name", NAMES)
def test_paa_and_mmdet_preset_builds_and_runs(name):
    check_preset_runs(name)
