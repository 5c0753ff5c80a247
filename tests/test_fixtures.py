"""The reference fixtures travel with the tests: every file is present, and a missing one fails
the fidelity test that asks for it instead of skipping it."""
from __future__ import annotations

import pytest

import conftest

REFERENCE_FILES = ["atss_cases.pt", "dynamic_atss_cases.pt", "iou_nms_cases.pt", "iou_refine_cases.pt", "paa_cases.pt",
                   "paa_raw_head_outputs.pt", "score_voting_cases.pt"]


def test_every_reference_fixture_is_vendored_in_tests_fixtures():
    assert (conftest.FIXTURES / "README.md").is_file()
    for name in REFERENCE_FILES:
        assert (conftest.FIXTURES / name).is_file(), name
        assert isinstance(conftest.load_fixture(name), list)


def test_a_missing_fixture_fails_rather_than_skips(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "FIXTURES", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="reference fixture .* is missing"):
        conftest.load_fixture("atss_cases.pt")
