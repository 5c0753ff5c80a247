"""``export``: a detector with pre- and post-processing in one graph, as ONNX (and a torch.export
program) for images of any size (:mod:`assigndet.export`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..presets import load_config
from .common import check_weights_file


def _build(args):
    """The preset's model on the CPU in eval mode with ``--weights`` loaded."""
    from ..checkpoints import load_weights
    from ..detectors import build_model
    from ..export import ExportableDetector

    check_weights_file(args.weights)
    cfg = load_config(args.preset, args.overrides)
    model = build_model(cfg.model)
    load_weights(model, args.weights)
    return model.eval(), ExportableDetector(model, batch_dim=args.batch_dim)


def _check_and_time(args, model, path: Path) -> None:
    """onnxruntime against eager on two random images of other sizes; with ``--benchmark`` the
    latency of both at ``--image-size`` (interleaved medians)."""
    import torch

    from ..export import example_image, onnx_detect, onnx_session
    from ..profile import interleaved_medians

    session = onnx_session(path, threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    for h, w in ((args.example_size[0] + 37, args.example_size[1] - 29), (args.example_size[0] - 41, args.example_size[1] + 53)):
        image = example_image(max(h, 32), max(w, 32), dtype=torch.uint8 if args.uint8 else torch.float32)
        with torch.no_grad():
            ref = model([image])[0]
        out = onnx_detect(session, image[None] if args.batch_dim else image)
        same = len(ref["scores"]) == len(out["scores"])
        diff = f", max |score difference| {(ref['scores'].sort().values - out['scores'].sort().values).abs().max():.1e}" \
            if same and len(out["scores"]) else ""
        print(f"check {tuple(image.shape)}: eager {len(ref['boxes'])} detections, onnxruntime {len(out['boxes'])}{diff}")
    if not args.benchmark:
        return
    image = example_image(*args.image_size, dtype=torch.uint8 if args.uint8 else torch.float32)
    feed = image[None] if args.batch_dim else image

    def eager() -> None:
        with torch.no_grad():
            model([image])

    t = interleaved_medians({"eager": eager, "onnxruntime": lambda: onnx_detect(session, feed)}, repeats=args.repeats)
    print(f"latency at {args.image_size[0]}x{args.image_size[1]} (medians of {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} torch thread(s)):")
    for name, v in t.items():
        print(f"  {name:<12} {v['wall_s'] * 1e3:8.1f} ms wall {v['cpu_s'] * 1e3:8.1f} ms CPU")
    print(f"  onnxruntime / eager: {t['onnxruntime']['wall_s'] / t['eager']['wall_s']:.2f}")


def cmd_export(args) -> int:
    import torch

    from ..export import MAX_SIDE, MIN_SIDE, example_image, export_onnx, export_program

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise InputError(f"the output must be a .onnx file, got {out}")
    model, wrapper = _build(args)
    dtype = torch.uint8 if args.uint8 else torch.float32
    example = example_image(*args.example_size, dtype=dtype, batch_dim=args.batch_dim)
    export_onnx(wrapper, out, example, opset=args.opset)
    shape = "(1, 3, H, W)" if args.batch_dim else "(3, H, W)"
    kind = "uint8 0..255" if args.uint8 else "float32 0..1"
    print(f"exported {args.preset} -> {out} ({out.stat().st_size / 2**20:.1f} MiB): input 'image' {shape} {kind} RGB, "
          f"H and W in [{MIN_SIDE}, {MAX_SIDE}]; outputs 'boxes' (N, 4) in input pixels, 'scores' (N,), 'labels' (N,)")
    if args.program:
        torch.export.save(export_program(wrapper, example), args.program)
        print(f"wrote the torch.export program (H and W dynamic) to {args.program}")
    if args.check or args.benchmark:
        _check_and_time(args, model, out)
    return 0


def register(sub) -> None:
    """export."""
    p = sub.add_parser("export", help="export a detector (resize, network, NMS in one graph) to ONNX, any image size")
    p.add_argument("preset", help="the preset of the weights (ATSS, PAA, Dynamic ATSS or Faster R-CNN)")
    p.add_argument("--weights", required=True, help="weights file (.safetensors or a released .pth)")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18 or later)")
    p.add_argument("--uint8", action="store_true", help="the graph takes uint8 0..255 images (default: float 0..1)")
    p.add_argument("--batch-dim", action="store_true", help="the graph takes (1, 3, H, W) (default: (3, H, W))")
    p.add_argument("--example-size", nargs=2, type=int, default=[224, 288], metavar=("H", "W"),
                   help="size of the random image that traces the graph; nothing of it is baked in (default: 224 288)")
    p.add_argument("--program", default=None, metavar="FILE.pt2", help="also save the torch.export program here")
    p.add_argument("--check", action="store_true", help="run onnxruntime and eager on two images of other sizes")
    p.add_argument("--benchmark", action="store_true", help="also time onnxruntime against eager PyTorch (CPU)")
    p.add_argument("--image-size", nargs=2, type=int, default=[256, 320], metavar=("H", "W"),
                   help="image size of --benchmark (default: 256 320)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of --benchmark (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="threads of torch and onnxruntime (default: theirs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.score_thresh=0.1")
    p.set_defaults(func=cmd_export)
