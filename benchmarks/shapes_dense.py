"""Train the small dense presets on the shapes dataset with the same schedule and tabulate AP.

    python benchmarks/shapes_dense.py --data data/shapes --out runs/shapes_dense
    python benchmarks/shapes_dense.py --presets atss_R_18_shapes paa_R_18_shapes   # a subset

PAA is evaluated twice from the same weights, with and without score voting. A finished run
(``model_final.safetensors`` present) is not trained again. Prints a Markdown table and writes
``results.json`` into --out.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from assigndet.checkpoints import load_weights  # noqa: E402
from assigndet.presets import load_config  # noqa: E402
from assigndet.data import generate_shapes  # noqa: E402
from assigndet.detectors import build_model  # noqa: E402
from assigndet.engine import evaluate, train  # noqa: E402

KEYS = ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/shapes")
    ap.add_argument("--out", default="runs/shapes_dense")
    ap.add_argument("--presets", nargs="+", default=["atss_R_18_shapes", "dynamic_atss_R_18_shapes", "paa_R_18_shapes"])
    ap.add_argument("overrides", nargs="*", help="key=value applied to every preset")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "annotations" / "instances_train.json").is_file():
        generate_shapes(data, seed=0)
    rows = {}
    for preset in args.presets:
        cfg = load_config(preset, [f"data.root={data}", *args.overrides])
        out = Path(args.out) / preset
        if not (out / "model_final.safetensors").is_file():
            train(cfg, out, progress=False, evaluate_at_end=False)
        model = build_model(cfg.model)
        load_weights(model, out / "model_final.safetensors")
        model.eval()
        variants = [(preset, cfg.model.score_voting)]
        if cfg.model.arch == "paa":
            variants = [(preset + " (score voting)", True), (preset + " (no voting)", False)]
        for name, voting in variants:
            model.cfg.score_voting = voting
            m = evaluate(model, cfg, out / ("eval_voting" if voting else "eval"), verbose=False)
            rows[name] = {k: m.get(k) for k in KEYS}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    print("| preset | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for name, r in rows.items():
        print(f"| `{name}` | " + " | ".join(f"{100 * r[k]:.1f}" if r[k] is not None and r[k] >= 0 else "–" for k in KEYS) + " |")


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
