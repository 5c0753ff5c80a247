import pytest
import torch

from assigndet.anchors import AnchorGenerator, cell_anchors
from assigndet.variants import Convention


def test_cell_anchors_match_spec():
    expect = {8: -27.5, 16: -55.5, 32: -111.5, 64: -223.5, 128: -447.5}
    for s, lo in expect.items():
        c = cell_anchors(s, 8 * s)
        assert c[0, 0].item() == lo and c[0, 2].item() == lo + 8 * s - 1
    # RetinaNet-style rounding of ratio shapes (SPEC §11)
    c = cell_anchors(8, 32, (0.5, 1.0), 1)
    assert c[0].tolist() == [-17.5, -7.5, 25.5, 15.5]
    assert c[1].tolist() == [-11.5, -11.5, 19.5, 19.5]
    m = cell_anchors(8, 64, style="mmdet")
    assert m.tolist() == [[-32.0, -32.0, 32.0, 32.0]]


def test_anchor_style_is_a_convention_coerced_once():
    assert torch.equal(cell_anchors(8, 64, style=Convention.mmdet), cell_anchors(8, 64, style="mmdet"))
    assert torch.equal(cell_anchors(16, 128, (0.5, 2.0), 3, style=Convention.mrcnn), cell_anchors(16, 128, (0.5, 2.0), 3))
    with pytest.raises(ValueError, match="expected one of: mrcnn, mmdet"):
        AnchorGenerator(sizes=[64], strides=[8], style="detectron")


def test_generator_order_and_fixture():
    from conftest import load_fixture

    case = load_fixture("atss_cases.pt")[0]
    assert case["anchor_style"] == "mrcnn"
    gen = AnchorGenerator(sizes=[64, 128, 256, 512, 1024], strides=[8, 16, 32, 64, 128])
    h, w = case["image_size"]
    sizes = []
    for s in (8, 16, 32):
        sizes.append((h // s, w // s))
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    anchors, per_level = gen(sizes)
    assert per_level == case["num_anchors_per_level"]
    torch.testing.assert_close(anchors, case["anchors"], rtol=0, atol=0)
