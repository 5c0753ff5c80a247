"""``assigndet benchmark``: inference latency and training-step time of a preset with a per-stage
breakdown, peak memory and FLOPs, beside torchvision's detector of the same kind in the same process.

How the breakdown is measured: every stage is timed *exclusively* (a stage's time excludes the
stages running inside it) by a stack of stopwatches, entered by forward hooks on the model's
modules (``transform`` -> preprocess, ``body`` + ``fpn`` -> backbone+FPN, ``head`` -> head,
``anchor_generator`` -> anchors; for two-stage detectors ``rpn`` -> RPN and the RoI pooler, box head
and predictor -> RoI heads) and by wrapping the assigners the detector calls (``model.assign``;
Dynamic ATSS's ``dynamic_atss_assign``; the RPN's ``match`` / ``paa_labels`` and the RoI heads'
``select_training_samples``) -> assignment. What is left of ``model(images)`` is post-processing
at inference and the losses in training; backward and the optimiser step are their own stages.
On CUDA the device is synchronised at every stage boundary.

Timing: medians over ``repeats`` interleaved rounds (assigndet inference, torchvision inference,
assigndet training step, torchvision training step) after one warm-up round; wall-clock
(``time.perf_counter``) and CPU time of all threads (``time.process_time``). Peak memory: CUDA
``torch.cuda.max_memory_allocated`` above the memory allocated before the run; CPU the peak
resident set size above the level before the run (freed heap handed back first with glibc's
``malloc_trim``), read from ``/proc/self/statm`` every millisecond by a sampling thread
(``ru_maxrss`` growth where /proc is missing), measured once after the timed rounds.
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one inference forward (convolutions and
matrix products; 1 multiply-add = 2 FLOPs). Weights are random; the image is synthetic.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import statistics
import threading
import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn

from .detectors import DenseDetector, build_model
from .detectors import dynamic_atss as dynamic_atss_module
from .nn.transform import resize_size
from .presets import load_config
from .utils import resolve_device


#: the breakdown's stages in the order they run
STAGES = ("preprocess", "backbone+FPN", "head", "anchors", "RPN", "RoI heads", "assignment", "losses",
          "post-processing", "backward", "optimizer")


# ------------------------------------------------------------------------------ stopwatches
class StageClock:
    """Exclusive wall and CPU seconds per stage name; ``with clock("name"):`` nests."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stack: list[str] = []
        self._mark = (0.0, 0.0)

    def _charge(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = (time.perf_counter(), time.process_time())
        if self._stack:
            top = self._stack[-1]
            self.wall[top] = self.wall.get(top, 0.0) + now[0] - self._mark[0]
            self.cpu[top] = self.cpu.get(top, 0.0) + now[1] - self._mark[1]
        self._mark = now

    def enter(self, name: str) -> None:
        self._charge()
        self._stack.append(name)

    def exit(self) -> None:
        self._charge()
        self._stack.pop()

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit()


def _timed(clock: StageClock, name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        with clock(name):
            return fn(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def instrument(model: nn.Module, clock: StageClock):
    """Hooks and wrappers that enter the breakdown's stages while ``model`` runs (module docstring)."""
    handles, restore = [], []

    def hook(module: Optional[nn.Module], name: str) -> None:
        if module is not None:
            handles.append(module.register_forward_pre_hook(lambda *_: clock.enter(name)))
            handles.append(module.register_forward_hook(lambda *_: clock.exit()))

    def wrap(owner, attr: str, name: str) -> None:
        if owner is not None and hasattr(owner, attr):
            restore.append((owner, attr, owner.__dict__.get(attr)))
            setattr(owner, attr, _timed(clock, name, getattr(owner, attr)))

    hook(model.transform, "preprocess")
    hook(model.body, "backbone+FPN")
    hook(model.fpn, "backbone+FPN")
    if isinstance(model, DenseDetector):
        hook(model.head, "head")
        hook(model.anchor_generator, "anchors")
        wrap(model, "assign", "assignment")
        wrap(dynamic_atss_module, "dynamic_atss_assign", "assignment")
    else:
        hook(model.rpn, "RPN")
        for part in ("box_roi_pool", "box_head", "box_predictor"):
            hook(getattr(model.roi_heads, part, None), "RoI heads")
        wrap(model.rpn, "match", "assignment")
        wrap(model.rpn, "paa_labels", "assignment")
        wrap(model.roi_heads, "select_training_samples", "assignment")
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for owner, attr, old in restore:
            if old is None and isinstance(owner, nn.Module):
                delattr(owner, attr)  # the instance wrapper; the class's method shows again
            else:
                setattr(owner, attr, old)


# ------------------------------------------------------------------------------ workloads
def synthetic_sample(height: int, width: int, num_classes: int, *, num_boxes: int = 4, seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[Tensor, dict]:
    """A random float image (3, H, W) and ``num_boxes`` GT boxes of 10-50 % of the image side."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=g)
    wh = (0.1 + 0.4 * torch.rand(num_boxes, 2, generator=g)) * torch.tensor([width, height])
    xy = torch.rand(num_boxes, 2, generator=g) * (torch.tensor([width, height]) - wh)
    target = {"boxes": torch.cat((xy, xy + wh), 1).to(device),
              "labels": torch.randint(0, num_classes, (num_boxes,), generator=g).to(device)}
    return image.to(device), target


def torchvision_counterpart(model: nn.Module, num_classes: int, min_size: int, max_size: int) -> tuple[str, nn.Module]:
    """torchvision's FCOS R-50-FPN for the dense detectors, Faster R-CNN R-50-FPN for the
    two-stage ones; random weights, the preset's class count and test-time resize sizes."""
    kw = dict(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size)
    if isinstance(model, DenseDetector):
        return "fcos_resnet50_fpn", fcos_resnet50_fpn(num_classes=num_classes, **kw)
    return "fasterrcnn_resnet50_fpn", fasterrcnn_resnet50_fpn(num_classes=num_classes + 1, **kw)


class Workload:
    """Inference and one SGD training step of a detector on one image, optionally staged."""

    def __init__(self, model: nn.Module, image: Tensor, target: dict) -> None:
        self.model, self.image, self.target = model, image, target
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9)

    def infer(self, clock: Optional[StageClock] = None) -> None:
        self.model.eval()
        with torch.no_grad(), (instrument(self.model, clock) if clock else contextlib.nullcontext()):
            with clock("post-processing") if clock else contextlib.nullcontext():
                self.model([self.image])

    def train_step(self, clock: Optional[StageClock] = None) -> None:
        self.model.train()
        stage = clock if clock else (lambda _: contextlib.nullcontext())
        with instrument(self.model, clock) if clock else contextlib.nullcontext():
            with stage("losses"):
                losses = self.model([self.image], [self.target])
        with stage("backward"):
            self.opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
        with stage("optimizer"):
            self.opt.step()


# ------------------------------------------------------------------------------ measurements
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``) so that the RSS of the
    next run starts from what is live, not from what earlier runs left cached."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory of one call above the level before it, in bytes (module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if not os.path.exists("/proc/self/statm"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    _release_free_heap()
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return int(max(peak[0], _rss_bytes()) - base)


def forward_flops(model: nn.Module, image: Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model([image])
    return int(counter.get_total_flops())


def _median_stages(clocks: list[StageClock]) -> dict:
    seen = {n for c in clocks for n in c.wall}
    names = [n for n in STAGES if n in seen] + sorted(seen - set(STAGES))
    stages = {n: {"wall_s": statistics.median(c.wall.get(n, 0.0) for c in clocks),
                  "cpu_s": statistics.median(c.cpu.get(n, 0.0) for c in clocks)} for n in names}
    total = sum(s["wall_s"] for s in stages.values()) or 1.0
    for s in stages.values():
        s["share"] = s["wall_s"] / total
    return stages


def _summary(wall: list[float], cpu: list[float], clocks: Optional[list[StageClock]] = None) -> dict:
    out = {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}
    if clocks:
        out["stages"] = _median_stages(clocks)
    return out



def _time_rounds(runs: dict[str, Workload], dev: torch.device, repeats: int) -> tuple[dict, dict, dict]:
    """``repeats`` interleaved rounds after a warm-up -> wall and CPU seconds per (run, phase),
    and assigndet's stage clocks per phase."""
    wall: dict[tuple[str, str], list[float]] = {(k, p): [] for k in runs for p in PHASES}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in wall}
    clocks: dict[str, list[StageClock]] = {p: [] for p in PHASES}
    for r in range(repeats + 1):  # round 0 warms up
        for phase in PHASES:
            for name, work in runs.items():
                clock = StageClock(dev) if name == "assigndet" else None
                t, c = time.perf_counter(), time.process_time()
                (work.infer if phase == "inference" else work.train_step)(clock)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if r:
                    wall[name, phase].append(time.perf_counter() - t)
                    cpu[name, phase].append(time.process_time() - c)
                    if clock:
                        clocks[phase].append(clock)
    return wall, cpu, clocks


#: the two timed phases
PHASES = ("inference", "train_step")


def run_benchmark(preset: str, *, image_size: tuple[int, int] = (512, 640), device: str = "auto", repeats: int = 3,
                  threads: Optional[int] = None, overrides: tuple[str, ...] = (), torchvision: bool = True,
                  num_boxes: int = 4) -> dict:
    """The figures of ``assigndet benchmark`` as a JSON-ready dict (module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(preset, list(overrides))
    dev = resolve_device(device if device != "auto" else cfg.device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev)
    image, target = synthetic_sample(*image_size, cfg.model.num_classes, num_boxes=num_boxes, device=dev)
    runs: dict[str, Workload] = {"assigndet": Workload(model, image, target)}
    i = cfg.model.input
    if torchvision:
        tv_name, tv = torchvision_counterpart(model, cfg.model.num_classes, i.min_size_test, i.max_size_test)
        runs["torchvision"] = Workload(tv.to(dev), image, target)
    wall, cpu, clocks = _time_rounds(runs, dev, repeats)
    result = {"preset": preset, "arch": cfg.model.arch.value, "device": str(dev), "image_size": list(image_size),
              "resized_size": list(resize_size(*image_size, i.min_size_test, i.max_size_test, i.resize_rule)),
              "repeats": repeats, "threads": torch.get_num_threads(), "num_gt_boxes": num_boxes,
              "memory_method": "torch.cuda.max_memory_allocated above the start" if dev.type == "cuda"
              else "peak RSS above the start (/proc/self/statm sampled every 1 ms)"}
    for name, work in runs.items():
        entry = {"model": preset if name == "assigndet" else tv_name,
                 "params": sum(p.numel() for p in work.model.parameters())}
        for phase in PHASES:
            entry[phase] = _summary(wall[name, phase], cpu[name, phase], clocks[phase] if name == "assigndet" else None)
        entry["flops"] = forward_flops(work.model, image)
        entry["peak_memory_bytes"] = {"inference": peak_memory(work.infer, dev),
                                      "train_step": peak_memory(work.train_step, dev)}
        result[name] = entry
    if torchvision:
        result["ratio_assigndet_over_torchvision"] = {
            p: result["assigndet"][p]["wall_s"] / result["torchvision"][p]["wall_s"] for p in PHASES}
    return result



def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _cells(stage: Optional[dict], width: int) -> str:
    """A stage's milliseconds and share, or dashes where the phase has no such stage."""
    if stage is None:
        return f"{'-':>{width}}{'-':>8}"
    return f"{_ms(stage['wall_s']):>{width}}{stage['share']:>8.1%}"


def _stage_rows(result: dict) -> list[str]:
    ours = result["assigndet"]
    inf, trn = ours["inference"]["stages"], ours["train_step"]["stages"]
    rows = [f"{'stage':<16}{'inference ms':>14}{'share':>8}{'train step ms':>15}{'share':>8}"]
    for name in dict.fromkeys([*inf, *trn]):
        rows.append(f"{name:<16}{_cells(inf.get(name), 14)}{_cells(trn.get(name), 15)}")
    for label, key in (("total (wall)", "wall_s"), ("total (CPU)", "cpu_s")):
        rows.append(f"{label:<16}{_ms(ours['inference'][key]):>14}{'':>8}{_ms(ours['train_step'][key]):>15}")
    return rows


def _side_by_side_rows(result: dict) -> list[str]:
    names = [n for n in ("assigndet", "torchvision") if n in result]
    head = "".join(f"{result[n]['model']:>28}" for n in names)
    rows = [f"{'':<24}{head}"]

    def row(label: str, fmt: Callable[[dict], str]) -> None:
        rows.append(f"{label:<24}" + "".join(f"{fmt(result[n]):>28}" for n in names))

    row("inference ms (wall)", lambda r: _ms(r["inference"]["wall_s"]))
    row("inference ms (CPU)", lambda r: _ms(r["inference"]["cpu_s"]))
    row("train step ms (wall)", lambda r: _ms(r["train_step"]["wall_s"]))
    row("train step ms (CPU)", lambda r: _ms(r["train_step"]["cpu_s"]))
    row("GFLOPs (one forward)", lambda r: f"{r['flops'] / 1e9:.2f}")
    row("parameters (M)", lambda r: f"{r['params'] / 1e6:.2f}")
    row("peak memory inf. (MiB)", lambda r: f"{r['peak_memory_bytes']['inference'] / 2**20:.1f}")
    row("peak memory train (MiB)", lambda r: f"{r['peak_memory_bytes']['train_step'] / 2**20:.1f}")
    return rows


def format_table(result: dict) -> str:
    """The printed form of :func:`run_benchmark`'s result."""
    h, w = result["image_size"]
    rh, rw = result["resized_size"]
    title = (f"{result['preset']} ({result['arch']}) on {result['device']}, image {h}x{w} -> {rh}x{rw}, "
             f"{result['threads']} thread(s), medians of {result['repeats']} interleaved round(s)")
    return "\n".join([title, "", *_stage_rows(result), "", *_side_by_side_rows(result),
                      f"(peak memory: {result['memory_method']})"])


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int = 5,
                        warmup: int = 1) -> dict[str, dict[str, float]]:
    """Each function ``warmup`` times, then ``repeats`` rounds of all in turn -> per function the
    median wall seconds (``wall_s``) and CPU seconds of all threads (``cpu_s``)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k])} for k in fns}


__all__ = ["run_benchmark", "format_table", "StageClock", "instrument", "peak_memory", "forward_flops",
           "synthetic_sample", "torchvision_counterpart", "Workload", "PHASES", "STAGES", "interleaved_medians"]
