"""The Python API's guarantees on every architecture (issue 11): edge-case targets (no GT, one GT,
1-pixel and sub-pixel boxes, boxes on the image border, duplicates) train with finite losses and
gradients; empty or inverted boxes are refused with a TargetError naming the image and the box;
eval-mode scores keep their graph back to an input image that requires grad (and only then)."""
import functools

import pytest
import torch

from assigndet.detectors import TargetError, build_model
from assigndet.errors import InputError
from assigndet.presets import load_config
from conftest import TINY_OVERRIDES
from test_faster_rcnn import TINY as TINY_RCNN

pytestmark = pytest.mark.usefixtures("one_thread")

#: architecture -> (preset, overrides) of a tiny model
MODELS = {
    "atss": ("atss_R_18_shapes", TINY_OVERRIDES + ["model.arch=atss"]),
    "paa": ("atss_R_18_shapes", TINY_OVERRIDES + ["model.arch=paa"]),
    "paa_mmdet": ("atss_R_18_shapes", TINY_OVERRIDES + ["model.arch=paa", "model.paa_variant=mmdet",
                                                        "model.offset=0.0", "model.loss_normalizer=local"]),
    "dynamic_atss": ("atss_R_18_shapes", TINY_OVERRIDES + ["model.arch=dynamic_atss"]),
    "faster_rcnn": ("faster_rcnn_R_18_shapes", TINY_RCNN),
    "faster_rcnn_paa": ("faster_rcnn_R_18_paa_shapes", TINY_RCNN),
    "iounet": ("iounet_R_18_shapes", TINY_RCNN + ["model.rcnn.iounet.head_dim=32", "model.rcnn.iounet.sample_num=64"]),
}

#: image sizes (H, W) of the two images
SIZES = [(64, 80), (72, 64)]

#: edge case -> per-image GT boxes (x1, y1, x2, y2) in input pixels
CASES = {
    "no_gt": [[], []],
    "one_gt": [[[10.0, 12.0, 50.0, 40.0]], []],
    "one_pixel": [[[10.0, 10.0, 11.0, 11.0], [30.0, 20.0, 31.0, 52.0]], [[5.0, 5.0, 6.0, 6.0]]],
    "sub_pixel": [[[20.0, 20.0, 20.25, 20.5]], [[0.0, 0.0, 0.001, 0.001]]],
    "border": [[[0.0, 0.0, 80.0, 64.0], [70.0, 54.0, 80.0, 64.0]], [[0.0, 60.0, 64.0, 72.0], [0.0, 0.0, 1.0, 72.0]]],
    "duplicates": [[[10.0, 10.0, 40.0, 40.0]] * 3, [[10.0, 10.0, 40.0, 40.0], [10.0, 10.0, 40.0, 40.0]]],
}


@functools.lru_cache(maxsize=None)
def _build(arch, extra):
    preset, overrides = MODELS[arch]
    torch.manual_seed(0)
    return build_model(load_config(preset, list(overrides) + list(extra)).model)


def tiny(arch, extra=()):
    """The tiny model of ``arch``, built once per module (the tests only read its weights)."""
    m = _build(arch, tuple(extra))
    m.zero_grad(set_to_none=True)
    return m


def images():
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in SIZES]


def targets_of(case):
    out = []
    for i, boxes in enumerate(CASES[case]):
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.arange(len(b)) % 3 if len(b) else torch.tensor([])  # empty: float, as torch.tensor([]) is
        out.append({"boxes": b, "labels": labels, "image_id": 100 + i})
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_edge_case_targets_give_finite_losses_and_gradients(arch, case):
    m = tiny(arch).train()
    losses = m(images(), targets_of(case))
    bad = {k: v.item() for k, v in losses.items() if not torch.isfinite(v)}
    assert not bad, bad
    sum(losses.values()).backward()
    for name, p in m.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


#: an empty or inverted box -> the reason the error names
DEGENERATE = {
    "zero_width": ([10.0, 10.0, 10.0, 40.0], "positive width and height"),
    "zero_height": ([10.0, 25.0, 30.0, 25.0], "positive width and height"),
    "inverted": ([30.0, 10.0, 20.0, 40.0], "positive width and height"),
    "nan": ([10.0, float("nan"), 20.0, 40.0], "non-finite"),
    "inf": ([10.0, 10.0, float("inf"), 40.0], "non-finite"),
    "empty_in_float32": ([10.0, 10.0, 10.0 + 1e-9, 40.0], "positive width and height"),  # float64 input
}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_degenerate_boxes_are_refused_naming_image_and_box(arch, kind):
    box, reason = DEGENERATE[kind]
    m = tiny(arch).train()
    targets = targets_of("one_gt")
    boxes = torch.tensor([[5.0, 5.0, 30.0, 30.0], box], dtype=torch.float64)
    targets[1] = {"boxes": boxes, "labels": torch.tensor([0, 1]), "image_id": 7}
    with pytest.raises(TargetError, match=rf"image 7: box 1 .*{reason}"):
        m(images(), targets)


@pytest.mark.parametrize("bad, message", [
    ({"boxes": [[1.0, 2.0, 3.0, 4.0]], "labels": torch.tensor([0])}, "must be tensors"),
    ({"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([0.0])}, "integer"),
    ({"boxes": torch.zeros(1, 5), "labels": torch.tensor([0])}, r"\(G, 4\)"),
    ({"labels": torch.tensor([0])}, "needs 'boxes' and 'labels'"),
    ({"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([3])}, "box 0 has label 3; .* below 3"),
])
def test_malformed_targets_are_one_clear_error(bad, message):
    m = tiny("faster_rcnn").train()
    with pytest.raises(TargetError, match=message):
        m(images(), [targets_of("one_gt")[0], bad])


def test_target_checks_synchronise_with_the_host_once_per_batch(monkeypatch):
    """Valid targets of 8 images: one tensor -> Python bool for the whole batch (on CUDA each one
    would wait for the device), none per image; no .item()/.tolist() either."""
    from assigndet.detectors.common import check_targets

    calls = []
    for name in ("__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: calls.append(_n) or _o(self, *a))
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 5.0 + i, 9.0]] * 3), "labels": torch.tensor([0, 1, 2]),
                "image_id": torch.tensor(i)} for i in range(8)]
    check_targets(targets, 8, num_classes=3, training=True)
    assert calls == ["__bool__"]


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(3, 32, 32), r"list of .* got a tensor of shape \(3, 32, 32\)"),
    ({"image": torch.zeros(3, 32, 32)}, "list of .* got dict"),
    ([torch.zeros(1, 32, 32)], r"image 0: expected a \(3, H, W\)"),
    ([torch.zeros(3, 0, 32)], "H, W > 0"),
    ([torch.zeros(3, 32, 32, dtype=torch.int32)], "uint8"),
])
@pytest.mark.parametrize("arch", ["atss", "faster_rcnn"])
def test_malformed_images_are_one_clear_error(arch, bad, message):
    with pytest.raises(InputError, match=message):
        tiny(arch).eval()(bad)


@pytest.mark.parametrize("arch", ["atss", "paa", "faster_rcnn", "faster_rcnn_paa"])
def test_eval_scores_keep_their_graph_to_an_input_requiring_grad(arch):
    m = tiny(arch, ["model.score_thresh=0.0"]).eval()  # untrained: keep every score
    plain = images()
    x = (plain[0].float() / 255).requires_grad_()
    out = m([x, plain[1]])
    assert len(out[0]["scores"]) > 0
    out[0]["scores"].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # without an input requiring grad the post-processing stays under no_grad (inference speed)
    assert not m(plain)[0]["scores"].requires_grad
    with torch.no_grad():
        assert not m([x, plain[1]])[0]["scores"].requires_grad


@pytest.mark.parametrize("arch", ["atss", "faster_rcnn"])
def test_a_batch_tensor_is_taken_as_its_images(arch):
    """As torchvision: one (B, 3, H, W) tensor = the list of its B images."""
    m = tiny(arch, ["model.score_thresh=0.0"]).eval()
    batch = torch.stack([images()[0]] * 2)  # (2, 3, 64, 80)
    with torch.no_grad():
        a, b = m(batch), m(list(batch))
    for x, y in zip(a, b):
        assert len(x["scores"]) > 0 and all(torch.equal(x[k], y[k]) for k in ("boxes", "scores", "labels"))
