"""mmdetection's dense post-processing rules: the method is an Arch, coerced once."""
import pytest
import torch

from assigndet.boxes import BoxCoder
from assigndet.postprocess import mmdet_postprocess
from assigndet.variants import Arch


def _inputs():
    g = torch.Generator().manual_seed(0)
    counts = [64, 16]
    xy = torch.rand(80, 2, generator=g) * 60
    anchors = torch.cat((xy, xy + 8 + torch.rand(80, 2, generator=g) * 30), dim=1)
    return (torch.randn(80, 4, generator=g), torch.randn(80, 4, generator=g) * 0.2, torch.randn(80, generator=g),
            anchors, counts, (64, 80), (128, 160), BoxCoder(offset=0.0))


@pytest.mark.parametrize("method", [Arch.atss, Arch.paa])
def test_mmdet_method_enum_and_spelling_agree(method):
    a = mmdet_postprocess(*_inputs(), method=method, score_voting=method is Arch.paa)
    b = mmdet_postprocess(*_inputs(), method=method.value, score_voting=method is Arch.paa)
    assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    assert len(a["boxes"]) > 0


def test_mmdet_postprocess_exists_for_atss_and_paa_only():
    with pytest.raises(ValueError, match="'atss' and 'paa'"):
        mmdet_postprocess(*_inputs(), method=Arch.dynamic_atss)
    with pytest.raises(ValueError, match="expected one of"):
        mmdet_postprocess(*_inputs(), method="retinanet")
