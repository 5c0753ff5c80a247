"""Peak memory of one training step with many GT boxes (issue 13, item 5): ATSS, PAA and Dynamic
ATSS R-50-FPN on an 800x1333 image with 50 and with 2000 GTs (crowd-scene sizes, 8-200 px),
random weights; the goal is a 2000-GT step within 1.5x the memory of the 50-GT step.

    python benchmarks/bench_many_gts.py --threads 2

Peak memory is :func:`assigndet.profile.peak_memory` (CUDA: max allocated; CPU: peak RSS above the
start, sampled every millisecond). Prints JSON with the peaks (MiB), the ratios and the step times.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # noisy shared machines: no busy-waiting workers

import torch  # noqa: E402

import assigndet  # noqa: E402
from assigndet.profile import peak_memory  # noqa: E402


def crowd_target(height: int, width: int, num_boxes: int, *, seed: int = 0) -> dict:
    """``num_boxes`` boxes of 8-200 px anywhere in the image, 80 classes."""
    g = torch.Generator().manual_seed(seed)
    wh = 8 + 192 * torch.rand(num_boxes, 2, generator=g)
    xy = torch.rand(num_boxes, 2, generator=g) * (torch.tensor([width, height]) - wh)
    return {"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(0, 80, (num_boxes,), generator=g)}


def step(model: torch.nn.Module, image: torch.Tensor, target: dict) -> None:
    model.zero_grad(set_to_none=True)
    sum(model([image], [target]).values()).backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1333)
    ap.add_argument("--gts", type=int, nargs=2, default=[50, 2000])
    ap.add_argument("--presets", nargs="+", default=["atss_R_50_FPN_1x", "paa_R_50_FPN_1x", "dynamic_atss_R_50_FPN_1x"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = torch.rand(3, args.height, args.width)
    out = {"threads": args.threads, "image": [args.height, args.width], "gts": args.gts}
    for preset in args.presets:
        torch.manual_seed(0)
        model = assigndet.build_detector(preset, overrides=[f"model.input.min_size_train=[{args.height}]",
                                                             f"model.input.max_size_train={args.width}"]).train()
        row = {}
        for n in args.gts:
            target = crowd_target(args.height, args.width, n)
            step(model, image, target)  # warm-up (allocator, caches)
            t = time.perf_counter()
            peak = peak_memory(lambda: step(model, image, target), torch.device("cpu"))
            row[str(n)] = {"peak_mib": peak / 2 ** 20, "step_s": time.perf_counter() - t}
        lo, hi = (row[str(n)]["peak_mib"] for n in args.gts)
        row["ratio"] = hi / lo
        out[preset] = row
        print(preset, json.dumps(row), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
