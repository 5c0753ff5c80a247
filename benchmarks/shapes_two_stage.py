"""Train the small two-stage presets on the shapes dataset with the same schedule and tabulate AP,
AP50/60/70/80/90: Faster R-CNN, + PAA RPN, and the IoU-Net ablation rows.

    python benchmarks/shapes_two_stage.py --data data/shapes --out runs/shapes_two_stage
    python benchmarks/shapes_two_stage.py --presets faster_rcnn_R_18_shapes     # a subset
    python benchmarks/shapes_two_stage.py solver.max_iter=300 solver.steps=[200,260]   # overrides
    python benchmarks/shapes_two_stage.py --out runs/w5 model.rcnn.iounet.loss_weight=5 --presets iounet_R_18_shapes
        # the reference's IoU loss weight (overrides go before --presets, which takes every name after it)
    python benchmarks/shapes_two_stage.py --threads 1     # a busy shared CPU

The IoU-Net is trained once (SmoothL1 IoU loss as the paper, weighted 1 on this small model) and
evaluated from the same weights with the test-time switches of the published ablation: IoU head
unused (plain Faster R-CNN
post-processing, PrRoIPool box head); + IoU-guided NMS; + refinement (lambda 0.5); and the improved
test-time settings (rank by cls x IoU, lambda 2). A finished run (``model_final.safetensors``
present) is not trained again. Prints a Markdown table and writes ``results.json`` into --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from assigndet.checkpoints import load_weights  # noqa: E402
from assigndet.presets import load_config  # noqa: E402
from assigndet.data import generate_shapes  # noqa: E402
from assigndet.detectors import build_model  # noqa: E402
from assigndet.engine import evaluate, train  # noqa: E402

KEYS = ["AP", "AP50", "AP60", "AP70", "AP80", "AP90"]

#: test-time variants of the IoU-Net rows: name -> model.rcnn.iounet fields
IOUNET_ROWS = {
    "IoU head unused at test": dict(test_iou_head=False),
    "+ IoU-guided NMS": dict(refine=False),
    "+ refinement (paper: rank IoU, lambda 0.5)": dict(),
    "+ refinement, improved test (rank cls x IoU, lambda 2)": dict(rank_by="score_iou", step_size=2.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/shapes")
    ap.add_argument("--out", default="runs/shapes_two_stage")
    ap.add_argument("--presets", nargs="+",
                    default=["faster_rcnn_R_18_shapes", "faster_rcnn_R_18_paa_shapes", "iounet_R_18_shapes"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy shared CPU)")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "annotations" / "instances_train.json").is_file():
        generate_shapes(data, seed=0)
    rows: dict[str, dict] = {}
    for preset in args.presets:
        cfg = load_config(preset, [f"data.root={data}", *args.overrides])
        out = Path(args.out) / preset
        t0 = time.time()
        if not (out / "model_final.safetensors").is_file():
            train(cfg, out, progress=False, evaluate_at_end=False)
        train_s = time.time() - t0
        model = build_model(cfg.model)
        load_weights(model, out / "model_final.safetensors")
        model.eval()
        variants = {preset: None}
        if cfg.model.arch == "iounet":
            variants = {f"{preset}: {name}": sw for name, sw in IOUNET_ROWS.items()}
        base = model.roi_heads.icfg if cfg.model.arch == "iounet" else None
        for i, (name, switches) in enumerate(variants.items()):
            if switches is not None:
                model.roi_heads.icfg = dataclasses.replace(base, **switches)
            t1 = time.time()
            m = evaluate(model, cfg, out / f"eval_{i}", verbose=False)
            rows[name] = {k: m.get(k) for k in KEYS}
            rows[name].update(train_s=round(train_s, 1), eval_s=round(time.time() - t1, 1))
            print(name, json.dumps(rows[name]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    print("| model | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * r[k]:.1f}" if r[k] is not None and r[k] >= 0 else "–"
                                           for k in KEYS) + " |")


if __name__ == "__main__":
    main()
