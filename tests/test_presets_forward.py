"""Every published-model preset builds and runs a small forward pass (eval mode, a 60x80 image at
a 64-pixel test size; the ``*_ms_test`` rows run their TTA with one small extra scale).

ATSS and Dynamic ATSS here, PAA / PAA_minimal / mmdetection in test_presets_forward_paa.py (two files
to keep each well under a minute on two shared cores)."""
from __future__ import annotations

import pytest
from conftest import check_preset_runs

from assigndet.presets import zoo_names

pytestmark = pytest.mark.usefixtures("one_thread")  # large models on a tiny input

NAMES = [n for n in zoo_names() if n.startswith(("atss_", "dynamic_atss_")) and not n.endswith("_mmdet")]


@pytest.mark.parametrize("name", NAMES)
def test_preset_builds_and_runs(name):
    check_preset_runs(name)
