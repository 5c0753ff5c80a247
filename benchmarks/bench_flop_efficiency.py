"""How close the dense forward pass runs to the machine: achieved GFLOP/s of the ATSS R-50-FPN and
torchvision FCOS R-50-FPN inference forwards (FLOPs from ``torch.utils.flop_counter``) next to the
same machine's dense matmul GFLOP/s, measured in the same process (issue 13, item 3).

    python benchmarks/bench_flop_efficiency.py --repeats 5 --threads 2

FLOPs count convolutions and matrix products (one multiply-add = 2 FLOPs) of one forward in eval
mode on a random image of the given size; the matmul peak is the median of float32 ``a @ b`` on
square matrices of ``--matmul-size``. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # noisy shared machines: no busy-waiting workers

import torch  # noqa: E402
import assigndet  # noqa: E402
from assigndet.profile import forward_flops  # noqa: E402
from bench_atss_vs_fcos import build_fcos  # noqa: E402
from common import LAST_CPU_MEDIANS, interleaved_medians  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--matmul-size", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"atss": assigndet.build_detector("atss_R_50_FPN_1x").eval(), "fcos": build_fcos().eval()}
    image = torch.rand(3, args.height, args.width)
    n = args.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)

    def run(m):
        with torch.no_grad():
            m([image])

    fns = {name: (lambda m=m: run(m)) for name, m in models.items()}
    fns["matmul"] = lambda: a @ b
    wall = interleaved_medians(fns, repeats=args.repeats)
    cpu = dict(LAST_CPU_MEDIANS)
    matmul_gflops = 2 * n ** 3 / wall["matmul"] / 1e9
    out = {"threads": args.threads, "image": [args.height, args.width], "repeats": args.repeats,
           "matmul": {"size": n, "wall_s": wall["matmul"], "gflop_per_s": matmul_gflops}}
    for name, m in models.items():
        flops = forward_flops(m, image)
        achieved = flops / wall[name] / 1e9
        out[name] = {"gflops": flops / 1e9, "wall_s": wall[name], "cpu_s": cpu[name], "gflop_per_s": achieved,
                     "share_of_matmul": achieved / matmul_gflops}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
