"""``plot``: the plots of one training run, or of several overlaid for comparison."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

#: where ``plot`` writes the comparison of several runs without ``--out``
COMPARE_DIR = "plots"


def cmd_plot(args) -> int:
    from ..viz import load_run, run_labels, write_plots

    runs = [load_run(d, label) for d, label in zip(args.runs, run_labels(args.runs))]
    out = Path(args.out) if args.out else (Path(args.runs[0]) if len(args.runs) == 1 else Path(COMPARE_DIR))
    written = write_plots(runs, out)
    if not written:
        raise InputError(f"nothing to plot in {', '.join(args.runs)}: no logged iteration and no evaluation")
    for png in written:
        print(png)
    return 0


def register(sub) -> None:
    """plot."""
    p = sub.add_parser(
        "plot", help="plot training runs: losses, learning rate, AP over evaluations, PR curves, per-class AP",
        description="Writes loss_curve.png (losses and learning rate over iterations, from metrics.jsonl), "
                    "ap_history.png (AP, AP50, AP75 over the evaluations, eval_history.jsonl), pr_curves.png "
                    "(precision-recall at IoU 0.5 and 0.75 of the last evaluation, pr_curves.json) and "
                    "per_class_ap.png (eval.json), each when its files exist. Several runs are overlaid, "
                    "labelled with their directory names.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (train --out DIR)")
    p.add_argument("--out", default=None,
                   help=f"output directory (default: the run directory itself for one run, ./{COMPARE_DIR} "
                        "for several)")
    p.set_defaults(func=cmd_plot)
