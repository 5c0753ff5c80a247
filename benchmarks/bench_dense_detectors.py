"""PAA and Dynamic ATSS against ATSS (R-50-FPN presets), same input, same process:

* one training step (forward + backward + SGD step) of each detector, as a ratio to ATSS's;
* PAA inference with score voting against without.

For inference the classification threshold is set to 0 so that every level contributes its full
1000 candidates and 100 detections survive NMS: the heaviest case for score voting (an untrained
model would otherwise produce almost no candidate above 0.05).

    python benchmarks/bench_dense_detectors.py --repeats 7 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # noisy shared machines: no busy-waiting workers

import torch  # noqa: E402

import assigndet  # noqa: E402
import common  # noqa: E402
from common import interleaved_medians  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--gts", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, args.height, args.width, generator=g)
    xy = torch.rand(args.gts, 2, generator=g) * torch.tensor([args.width * 0.7, args.height * 0.7])
    wh = 16 + torch.rand(args.gts, 2, generator=g) * torch.tensor([args.width * 0.3, args.height * 0.3])
    targets = [{"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 80, (args.gts,), generator=g)}]

    models, opts = {}, {}
    for name, preset in (("atss", "atss_R_50_FPN_1x"), ("paa", "paa_R_50_FPN_1x"), ("dynamic_atss", "dynamic_atss_R_50_FPN_1x")):
        torch.manual_seed(0)
        models[name] = assigndet.build_detector(preset).train()
        opts[name] = torch.optim.SGD([p for p in models[name].parameters() if p.requires_grad], lr=1e-6, momentum=0.9)

    def step(name):
        m = models[name]
        losses = m([image], targets)
        opts[name].zero_grad()
        sum(losses.values()).backward()
        opts[name].step()

    train = interleaved_medians({k: (lambda k=k: step(k)) for k in models}, repeats=args.repeats)
    train_cpu = dict(common.LAST_CPU_MEDIANS)

    paa = models["paa"].eval()
    paa.cfg.score_thresh = 0.0

    def infer(voting: bool):
        paa.cfg.score_voting = voting
        with torch.no_grad():
            out = paa([image])
        assert len(out[0]["boxes"]) == 100
        return out

    inf = interleaved_medians({"paa_voting": lambda: infer(True), "paa_no_voting": lambda: infer(False)}, repeats=args.repeats)
    inf_cpu = dict(common.LAST_CPU_MEDIANS)
    res = {
        "threads": args.threads, "image": [args.height, args.width], "gts": args.gts, "repeats": args.repeats,
        "train_step_s": train, "inference_s": inf,
        "train_ratio_paa_over_atss": train["paa"] / train["atss"],
        "train_ratio_dynamic_atss_over_atss": train["dynamic_atss"] / train["atss"],
        "inference_ratio_voting_over_no_voting": inf["paa_voting"] / inf["paa_no_voting"],
        "cpu_train_step_s": train_cpu, "cpu_inference_s": inf_cpu,
        "cpu_train_ratio_paa_over_atss": train_cpu["paa"] / train_cpu["atss"],
        "cpu_train_ratio_dynamic_atss_over_atss": train_cpu["dynamic_atss"] / train_cpu["atss"],
        "cpu_inference_ratio_voting_over_no_voting": inf_cpu["paa_voting"] / inf_cpu["paa_no_voting"],
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
