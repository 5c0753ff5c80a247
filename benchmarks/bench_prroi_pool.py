"""PrRoIPool vs torchvision RoIAlign: forward + backward time on one FPN level.

    python benchmarks/bench_prroi_pool.py [--rois 512] [--channels 256] [--repeats 7] [--device cpu]

Default workload: a 1 x 256 x 100 x 152 map (stride 8 of an 800 x 1216 image), 512 RoIs with
random sides in [16, 400] px, 7 x 7 bins. PrRoIPool back-propagates into the features *and* the
RoI coordinates; RoIAlign (sampling_ratio=0, aligned=False, i.e. Faster R-CNN's setting) into
the features only. Both run on the same inputs, interleaved, and the median of the repeats is
reported (plus the forward-only medians).

OpenMP's wait policy is set to PASSIVE unless OMP_WAIT_POLICY is already set: on a CPU shared
with other busy processes, spinning OpenMP workers steal the core from the main thread and every
small torch op waits a scheduler slice (2 threads on a loaded 2-core box: ~5x slower). RoIAlign's
CPU kernel is single-threaded and unaffected. Run with OMP_WAIT_POLICY=ACTIVE to see the effect.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

from assigndet.ops import prroi_pool  # noqa: E402


def make_inputs(num_rois: int, channels: int, height: int, width: int, stride: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, channels, height, width, generator=g)  # (B, C, H, W)
    img_w, img_h = width * stride, height * stride
    wh = torch.rand(num_rois, 2, generator=g) * (400 - 16) + 16  # (R, 2) sides in px
    room = torch.tensor([img_w, img_h], dtype=torch.float32) - wh  # (R, 2)
    xy = torch.rand(num_rois, 2, generator=g) * room  # (R, 2) top-left corner
    rois = torch.cat((torch.zeros(num_rois, 1), xy, xy + wh), dim=1)  # (R, 5)
    return feats.to(device), rois.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn, device: str) -> tuple[float, float]:
    """(forward seconds, forward + backward seconds) of one call."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    t1 = time.perf_counter()
    out.backward(torch.ones_like(out))
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--height", type=int, default=100)
    parser.add_argument("--width", type=int, default=152)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    feats, rois = make_inputs(args.rois, args.channels, args.height, args.width, args.stride, args.device)
    scale = 1.0 / args.stride
    f_pr = feats.clone().requires_grad_(True)
    r_pr = rois.clone().requires_grad_(True)
    f_ra = feats.clone().requires_grad_(True)

    def run_prroi():
        f_pr.grad = None
        r_pr.grad = None
        return prroi_pool(f_pr, r_pr, args.output_size, scale)

    def run_roi_align():
        f_ra.grad = None
        return roi_align(f_ra, rois, args.output_size, scale, sampling_ratio=0, aligned=False)

    for fn in (run_prroi, run_roi_align):  # warm-up
        time_once(fn, args.device)

    times: dict[str, list[tuple[float, float]]] = {"prroi_pool": [], "roi_align": []}
    for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
        times["prroi_pool"].append(time_once(run_prroi, args.device))
        times["roi_align"].append(time_once(run_roi_align, args.device))

    print(
        f"device={args.device} threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
        f"torch={torch.__version__} "
        f"map=1x{args.channels}x{args.height}x{args.width} rois={args.rois} out={args.output_size} "
        f"repeats={args.repeats}"
    )
    med = {}
    for name, ts in times.items():
        fwd = statistics.median(t[0] for t in ts)
        tot = statistics.median(t[1] for t in ts)
        med[name] = tot
        print(f"{name:>10s}: fwd {fwd * 1e3:8.1f} ms   fwd+bwd {tot * 1e3:8.1f} ms   (all fwd+bwd: "
              + ", ".join(f"{t[1] * 1e3:.0f}" for t in ts) + ")")
    print(f"ratio prroi_pool / roi_align (fwd+bwd medians): {med['prroi_pool'] / med['roi_align']:.3f}")


if __name__ == "__main__":
    main()
