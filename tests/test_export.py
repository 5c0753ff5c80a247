"""Exported detectors (torch.export, ONNX + onnxruntime) against eager PyTorch on images of sizes
the export never saw: the resize rule, the anchor count and every detection count are data in
the graph, not constants of the example image."""
import onnxruntime  # noqa: F401  (the export test needs it: a missing install fails here)
import pytest
import torch

import assigndet
from assigndet.data import generate_shapes, read_rgb
from assigndet.errors import ConfigError
from assigndet.detectors.rcnn_parts import LevelRoIAlign
from assigndet.export import (ExportableDetector, ExportableLevelRoIAlign, example_image, export_onnx, export_program,
                              onnx_detect, onnx_session, resized_size)
from assigndet.nn.transform import resize_size
from assigndet.variants import ResizeRule

pytestmark = pytest.mark.usefixtures("one_thread")

#: random weights give scores around sqrt(0.01 x 0.5): a low threshold leaves ~100 detections to compare
LOW_THRESH = ["model.score_thresh=0.01"]


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory):
    """Real inputs: shapes-dataset images of several sizes (none used at export time), float 0..1."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=1, num_val=4, seed=3, min_side=120, max_side=420)
    images = [read_rgb(p).float() / 255 for p in sorted((root / "val").glob("*.jpg"))]
    assert len({tuple(i.shape) for i in images}) >= 3
    return images


def match(eager: dict, exported: dict) -> None:
    """Same detections: count, labels, scores within 1e-4, boxes within 1e-3 relative; order may
    differ among equal scores, so each eager detection is paired with the closest exported one of
    its label and score."""
    assert len(eager["boxes"]) == len(exported["boxes"]) > 0
    assert torch.equal(eager["labels"].sort().values, exported["labels"].sort().values)
    for box, score, label in zip(eager["boxes"], eager["scores"], eager["labels"]):
        same = (exported["labels"] == label) & ((exported["scores"] - score).abs() <= 1e-4)
        assert same.any(), f"no exported detection with label {int(label)} and score {float(score):.6f}"
        err = ((exported["boxes"][same] - box).abs() / box.abs().clamp(min=1.0)).max(dim=1).values.min()
        assert err <= 1e-3, f"box {box.tolist()}: relative error {float(err):.2e}"


def spread_scores(layer, model, image, std: float = 2.0) -> None:
    """Scale a random classifier so that its logits on ``image`` have standard deviation ``std``:
    random features saturate the softmax (every score 1.0), and NMS and the top-k cut among exact
    ties would hinge on the order of equal floats."""
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.std()))
    eager(model, image)
    handle.remove()
    with torch.no_grad():
        layer.weight.mul_(std / seen[0])
        layer.bias.zero_()


def eager(model, image):
    with torch.no_grad():
        return model([image])[0]


@pytest.mark.parametrize("rule", list(ResizeRule))
def test_graph_resize_rule_equals_the_transforms_rule(rule):
    sizes = [(h, w) for h in (17, 97, 256, 333, 480, 800, 1333) for w in (31, 256, 300, 640, 799, 1500)]
    for min_size, max_size in ((256, 384), (800, 1333), (600, 0)):
        for h, w in sizes:
            got = tuple(int(t) for t in resized_size(h, w, min_size, max_size, rule))
            assert got == resize_size(h, w, min_size, max_size, rule), (h, w, min_size, max_size)


def test_onnx_paa_matches_eager_on_unseen_image_sizes(shapes_images, tmp_path):
    """PAA (score voting in the graph): exported with a 224 x 288 random image, run on shapes images."""
    torch.manual_seed(0)
    model = assigndet.build_detector("paa_R_18_shapes", overrides=LOW_THRESH).eval()
    path = export_onnx(ExportableDetector(model), tmp_path / "paa.onnx", example_image(224, 288))
    session = onnx_session(path)
    for image in shapes_images:
        match(eager(model, image), onnx_detect(session, image))


def test_onnx_faster_rcnn_matches_eager_on_unseen_image_sizes(shapes_images, tmp_path):
    torch.manual_seed(0)
    model = assigndet.build_detector("faster_rcnn_R_18_shapes", overrides=["model.score_thresh=0.0"]).eval()
    spread_scores(model.roi_heads.box_predictor.cls_score, model, shapes_images[0])
    path = export_onnx(ExportableDetector(model), tmp_path / "frcnn.onnx", example_image(224, 288))
    session = onnx_session(path)
    for image in shapes_images:
        match(eager(model, image), onnx_detect(session, image))


def test_exportable_roi_align_twin_pools_as_the_models_pooler():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 64 // s, 80 // s, generator=g) for s in (4, 8, 16, 32)]  # two images
    xy = torch.rand(40, 2, generator=g) * 50
    rois = torch.cat((xy, xy + 2 + torch.rand(40, 2, generator=g) * 200), 1)  # every level, some off the image
    pool = LevelRoIAlign((4, 8, 16, 32), 7, 2)
    twin = ExportableLevelRoIAlign((4, 8, 16, 32), 7, 2)
    assert torch.equal(pool(feats, [rois[:25], rois[25:]]), twin(feats, [rois[:25], rois[25:]]))
    assert twin(feats, [rois[:0]]).shape == (0, 8, 7, 7)


def test_torch_export_dynamic_atss_runs_every_size_static_one_size(shapes_images, tmp_path):
    torch.manual_seed(0)
    model = assigndet.build_detector("atss_R_18_shapes", overrides=LOW_THRESH).eval()
    wrapper = ExportableDetector(model)
    torch.export.save(export_program(wrapper, example_image(224, 288)), tmp_path / "atss.pt2")
    dynamic = torch.export.load(tmp_path / "atss.pt2").module()  # saved and loaded (torchvision imported: its ops)
    for image in shapes_images:
        boxes, scores, labels = dynamic(image)
        match(eager(model, image), {"boxes": boxes, "scores": scores, "labels": labels})
    image = shapes_images[0]
    static = export_program(wrapper, image, dynamic=False).module()
    boxes, scores, labels = static(image)
    match(eager(model, image), {"boxes": boxes, "scores": scores, "labels": labels})
    other = next(i for i in shapes_images if i.shape != image.shape)
    with pytest.raises(Exception, match="shape|size|Expected input"):
        static(other)  # a static program names the one size it takes


def test_export_refuses_what_the_graph_does_not_reproduce():
    with pytest.raises(ConfigError, match="postprocess"):
        ExportableDetector(assigndet.build_detector("atss_R_18_shapes", overrides=["model.postprocess=mmdet"]))
    with pytest.raises(ConfigError, match="IoU-Net"):
        ExportableDetector(assigndet.build_detector("iounet_R_18_shapes"))
