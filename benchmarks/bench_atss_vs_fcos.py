"""ATSS R-50-FPN (assigndet, preset atss_R_50_FPN_1x) against torchvision's FCOS R-50-FPN with the
same backbone (FrozenBN, stem + layer1 frozen), FPN P3-P7, head (4 GN convs per tower, 256 ch)
and 80 classes, on the same image in the same process: inference and one training step
(forward + backward + SGD step). Times are medians of interleaved repetitions. ``atss_plain`` is
the same ATSS (same weights) with ``model.fast_path=false``: what the fast path (FrozenBN folded
into the convs, ReLU and residual sums fused into them, channels-last, the head layer by layer over
the levels) contributes.

    python benchmarks/bench_atss_vs_fcos.py --repeats 7 --threads 2
    python benchmarks/bench_atss_vs_fcos.py --repeats 5 --threads 2 --processes 3

With ``--processes N`` the measurement runs in N fresh processes one after another and the
medians of their ratios are printed beside each process's: on a shared machine whole processes
differ (FCOS's large temporaries page-fault, and how much depends on the process's heap), by more
than repetitions inside one process do.
"""
from __future__ import annotations

import argparse
import json

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # noisy shared machines: no busy-waiting workers

import torch  # noqa: E402
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.fcos import FCOS
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import assigndet
import common
from common import interleaved_medians


def build_fcos() -> torch.nn.Module:
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(backbone, num_classes=80, min_size=800, max_size=1333)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--gts", type=int, default=10)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    if args.processes > 1:
        return across_processes(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    atss = assigndet.build_detector("atss_R_50_FPN_1x")
    plain = assigndet.build_detector("atss_R_50_FPN_1x", overrides=["model.fast_path=false"])
    plain.load_state_dict(atss.state_dict())
    fcos = build_fcos()
    image = torch.rand(3, args.height, args.width)
    xy = torch.rand(args.gts, 2) * torch.tensor([args.width * 0.7, args.height * 0.7])
    wh = 16 + torch.rand(args.gts, 2) * torch.tensor([args.width * 0.3, args.height * 0.3])
    boxes = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(0, 80, (args.gts,))
    t_atss = [{"boxes": boxes, "labels": labels}]
    t_fcos = [{"boxes": boxes, "labels": labels}]
    models = {"atss": (atss, t_atss), "atss_plain": (plain, t_atss), "fcos": (fcos, t_fcos)}

    def infer(m):
        m.eval()
        with torch.no_grad():
            m([image])

    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
            for k, (m, _) in models.items()}

    def step(name, m, t):
        m.train()
        losses = m([image], t)
        opts[name].zero_grad()
        sum(losses.values()).backward()
        opts[name].step()

    inf = interleaved_medians({k: (lambda m=m: infer(m)) for k, (m, _) in models.items()}, repeats=args.repeats)
    inf_cpu = dict(common.LAST_CPU_MEDIANS)
    trn = interleaved_medians({k: (lambda k=k, m=m, t=t: step(k, m, t)) for k, (m, t) in models.items()},
                              repeats=args.repeats)
    trn_cpu = dict(common.LAST_CPU_MEDIANS)
    res = {"threads": args.threads, "image": [args.height, args.width], "repeats": args.repeats,
           "inference_s": inf, "train_step_s": trn,
           "inference_ratio_atss_over_fcos": inf["atss"] / inf["fcos"],
           "train_step_ratio_atss_over_fcos": trn["atss"] / trn["fcos"],
           "cpu_inference_s": inf_cpu, "cpu_train_step_s": trn_cpu,
           "cpu_inference_ratio_atss_over_fcos": inf_cpu["atss"] / inf_cpu["fcos"],
           "cpu_train_step_ratio_atss_over_fcos": trn_cpu["atss"] / trn_cpu["fcos"],
           "fast_over_plain": {"inference": inf["atss"] / inf["atss_plain"], "train_step": trn["atss"] / trn["atss_plain"],
                               "cpu_inference": inf_cpu["atss"] / inf_cpu["atss_plain"],
                               "cpu_train_step": trn_cpu["atss"] / trn_cpu["atss_plain"]}}
    print(json.dumps(res, indent=1))


#: the ratios summarised across processes
RATIOS = ["inference_ratio_atss_over_fcos", "train_step_ratio_atss_over_fcos", "cpu_inference_ratio_atss_over_fcos",
          "cpu_train_step_ratio_atss_over_fcos", "fast_over_plain.inference", "fast_over_plain.train_step",
          "fast_over_plain.cpu_inference", "fast_over_plain.cpu_train_step"]
#: and the seconds behind them
SECONDS = [f"{kind}.{model}" for kind in ("inference_s", "train_step_s") for model in ("atss", "atss_plain", "fcos")]


def across_processes(args) -> None:
    argv = [f"--{k}={v}" for k, v in vars(args).items() if k != "processes"]
    runs = common.in_fresh_processes(__file__, argv, args.processes)
    per_run = [common.median_of([r], RATIOS + SECONDS) for r in runs]
    print(json.dumps({"processes": args.processes, "repeats": args.repeats, "threads": args.threads,
                      "median": common.median_of(runs, RATIOS + SECONDS), "runs": per_run}, indent=1))


if __name__ == "__main__":
    main()
