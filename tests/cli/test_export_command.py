"""``assigndet export``: an ONNX file that takes uint8 (1, 3, H, W) images of any size, and one-line
errors for a wrong output name or missing weights."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

import assigndet
from assigndet.checkpoints import save_weights
from assigndet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_export_writes_onnx_for_uint8_batched_images_of_any_size(tmp_path, capsys):
    torch.manual_seed(0)
    model = assigndet.build_detector("atss_R_18_shapes", overrides=["model.score_thresh=0.01"]).eval()
    weights = save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", "atss_R_18_shapes", "--weights", str(weights), "--out", str(out), "--uint8",
                 "--batch-dim", "--check", "model.score_thresh=0.01"]) == 0
    printed = capsys.readouterr().out
    assert "(1, 3, H, W) uint8" in printed and printed.count("check (3,") == 2
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[:2] == [1, 3] and all(isinstance(d, str) for d in inp.shape[2:])
    for h, w in ((150, 333), (301, 199)):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        boxes, scores, labels = session.run(None, {"image": image[None].numpy()})
        with torch.no_grad():
            ref = model([image.float() / 255])[0]  # float input: the graph's bilinear resize, not Pillow's
        assert boxes.shape == (len(ref["boxes"]), 4) and len(boxes) > 0 and labels.dtype == np.int64
        assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h  # in the input image's pixels
        np.testing.assert_allclose(np.sort(scores), np.sort(ref["scores"].numpy()), atol=1e-4)


def test_export_bad_output_name_and_missing_weights_are_one_line_errors(tmp_path, capsys):
    weights = save_weights(assigndet.build_detector("atss_R_18_shapes"), tmp_path / "w.safetensors")
    assert main(["export", "atss_R_18_shapes", "--weights", str(weights), "--out", str(tmp_path / "m.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"assigndet: error: the output must be a .onnx file, got {tmp_path / 'm.pt'}"
    assert main(["export", "atss_R_18_shapes", "--weights", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.safetensors" in err[0]
