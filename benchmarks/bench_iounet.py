"""IoU-Net inference cost against plain Faster R-CNN on CPU (issue: refinement <= 1.3x), with the
ablation latencies of the published table (Faster R-CNN; + IoU head; + IoU-guided NMS;
+ refinement).

    python benchmarks/bench_iounet.py [--repeats 7] [--threads 1] [--height 480 --width 640]
                                      [--loads 0.35,1.0]

Both detectors are R-50-FPN presets at the COCO test scale (short side 800: 480 x 640 becomes
800 x 1067): ``faster_rcnn_R_50_FPN_1x`` (RoIAlign) and ``iounet_R_50_FPN_1x`` (PrRoIPool, IoU
head). The Faster R-CNN gets the IoU-Net's backbone, FPN, RPN and box-head weights, so both see the
same image, the same 1000 proposals and the same class scores. An untrained box classifier is not a
realistic load (with random weights either nothing or everything passes the 0.05 threshold), so its
background bias is calibrated to a *load*: the fraction of the 1000 RoIs having some class with
p >= 0.05 (default 0.35, "typical", and 1.0, "heavy": every RoI reaches the IoU head and the NMS).
The resulting (RoI, class) pairs and NMS survivors are printed; in both loads more than 100 boxes
survive the IoU-guided NMS, so the refinement works on its full ``pre_refine`` = 100 boxes.

Rows (medians of interleaved repeats, one process):

* ``faster_rcnn``: the plain detector (RoIAlign box head, per-class NMS);
* ``iounet_no_iou_head``: IoU-Net with the IoU head unused at test (PrRoIPool box head);
* ``plus_iou_head``: the IoU head on the candidate RoIs, plain NMS (by class score), no refinement;
* ``plus_iou_nms``: IoU-guided NMS, no refinement;
* ``plus_refinement``: the full paper-faithful inference (T 5, Omega 0.001 / -0.01, lambda 0.5);
* ``plus_refinement_T5``: the worst case, every box refined for all 5 steps (Omegas disabled).

OpenMP's wait policy is PASSIVE unless set (see bench_prroi_pool.py: spinning workers on a shared
CPU slow small ops down).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402

import assigndet  # noqa: E402
from common import interleaved_medians  # noqa: E402


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A uint8 RGB image with low-frequency structure (blobs), not white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, height // 32, width // 32, generator=g)
    img = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)[0]
    img = img + 0.05 * torch.rand(3, height, width, generator=g)
    return (img.clamp(0, 1) * 255).to(torch.uint8)


def calibrate_background_bias(logits: torch.Tensor, frac: float, thresh: float = 0.05) -> float:
    """Background logit bias b for which a fraction ``frac`` of the RoIs has a class >= ``thresh``
    (logits (R, C + 1) computed with a zero bias; bisection, the fraction falls as b grows)."""
    lo, hi = -40.0, 60.0
    for _ in range(60):
        b = (lo + hi) / 2
        shifted = logits.clone()
        shifted[:, 0] += b
        got = float((shifted.softmax(-1)[:, 1:].amax(1) >= thresh).float().mean())
        lo, hi = (b, hi) if got > frac else (lo, b)
    return (lo + hi) / 2


def run_load(iounet, frcnn, image, frac: float, cls_scale: float, repeats: int) -> dict:
    """Calibrate the classifier to ``frac`` candidate RoIs, share the weights, time every row."""
    with torch.no_grad():
        pred = iounet.roi_heads.box_predictor.cls_score
        pred.weight.copy_(iounet.roi_heads.cls_weight0 * cls_scale)
        pred.bias.zero_()
        batch, sizes, _ = iounet.transform([image])
        feats = iounet.features(batch)
        proposals, _ = iounet.rpn(feats, sizes)
        logits, _ = iounet.roi_heads.box_forward(feats[:4], proposals, sizes)
        pred.bias[0] = calibrate_background_bias(logits, frac)
        probs = iounet.roi_heads.box_forward(feats[:4], proposals, sizes)[0].softmax(-1)[:, 1:]
    shared = {k: v for k, v in iounet.state_dict().items() if not k.startswith("roi_heads.iou_head")}
    missing, unexpected = frcnn.load_state_dict(shared, strict=False)
    assert not missing and not unexpected, (missing, unexpected)

    base = iounet.roi_heads.icfg
    variants = {
        "iounet_no_iou_head": dataclasses.replace(base, test_iou_head=False),
        "plus_iou_head": dataclasses.replace(base, iou_nms=False, refine=False),
        "plus_iou_nms": dataclasses.replace(base, refine=False),
        "plus_refinement": base,
        "plus_refinement_T5": dataclasses.replace(base, omega1=-1.0, omega2=-1e9),
    }

    def run_iounet(v):
        iounet.roi_heads.icfg = v
        with torch.no_grad():
            return iounet([image])

    def run_frcnn():
        with torch.no_grad():
            return frcnn([image])

    load = {"candidate_roi_fraction": frac, "resized": list(sizes[0]), "proposals": len(proposals[0]),
            "rois_with_a_class_above_0.05": int((probs.amax(1) >= 0.05).sum()),
            "pairs_above_0.05": int((probs >= 0.05).sum())}
    # boxes kept by the IoU-guided NMS before the top-100 cut (the refinement takes the first 100)
    cut = iounet.roi_heads.detections_per_img
    iounet.roi_heads.detections_per_img = 10**6
    load["iou_nms_kept"] = len(run_iounet(dataclasses.replace(base, refine=False))[0]["boxes"])
    iounet.roi_heads.detections_per_img = cut

    fns = {"faster_rcnn": run_frcnn}
    fns.update({k: (lambda v=v: run_iounet(v)) for k, v in variants.items()})
    med = interleaved_medians(fns, repeats=repeats)
    iounet.roi_heads.icfg = base
    return {"load": load, "median_s": med, "ratio_to_faster_rcnn": {k: med[k] / med["faster_rcnn"] for k in med}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--loads", default="0.35,1.0",
                    help="fractions of the 1000 RoIs with a class score >= 0.05 (typical, heavy)")
    ap.add_argument("--cls-scale", type=float, default=1.0, help="multiplier of the classifier weights")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    iounet = assigndet.build_detector("iounet_R_50_FPN_1x").eval()
    frcnn = assigndet.build_detector("faster_rcnn_R_50_FPN_1x").eval()
    iounet.roi_heads.cls_weight0 = iounet.roi_heads.box_predictor.cls_score.weight.detach().clone()
    image = smooth_image(args.height, args.width)
    res = {"threads": args.threads, "image": [args.height, args.width], "repeats": args.repeats, "loads": []}
    for frac in (float(x) for x in args.loads.split(",")):
        res["loads"].append(run_load(iounet, frcnn, image, frac, args.cls_scale, args.repeats))
    res["goal_refinement_le_1.3x"] = {str(r["load"]["candidate_roi_fraction"]): r["ratio_to_faster_rcnn"]["plus_refinement"] <= 1.3
                                      for r in res["loads"]}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
