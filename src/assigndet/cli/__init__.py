"""The ``assigndet`` command line (also ``python -m assigndet``).

::

    assigndet train PRESET --out DIR [--resume] [key=value ...]
    assigndet eval PRESET --weights W [--out DIR] [key=value ...]
    assigndet predict --weights W [--preset P] IMAGES_OR_DIR ... --out DIR [--score-thresh 0.3]
    assigndet data shapes --out DIR --train N --val M --seed S
    assigndet presets [--show NAME]
    assigndet convert IN.pth OUT.safetensors --preset NAME [key=value ...]
    assigndet demo [--out runs/demo] [--data data/shapes]

``train`` and ``eval`` also run under ``torchrun`` (one process per device).

Exit codes: 0 success; 2 user error (bad preset/key/value, missing dataset, weights or image:
one line ``assigndet: error: ...`` on stderr, ``--debug`` shows the traceback); 1 any other
failure, including a non-finite training loss; 130 / 143 training stopped by SIGINT / SIGTERM
after saving a checkpoint (continue with ``--resume``).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from typing import Optional, Sequence

#: OpenMP (libgomp) spin iterations before an idle worker thread sleeps, on a machine found idle
IDLE_SPINCOUNT = 5000
#: "idle": a 1-minute load average below this many busy cores when the command starts
IDLE_LOAD = 0.5


def openmp_waiting(env=os.environ, load: Optional[float] = None) -> None:
    """Set how OpenMP's idle worker threads wait, before torch loads it; explicit settings win.

    They sleep (``OMP_WAIT_POLICY=PASSIVE``): with OpenMP's default busy-waiting, 2 compute
    threads beside the data-loader workers on a loaded 2-core machine ran a training iteration
    ~10x slower. On a machine that looks idle they first spin briefly (``GOMP_SPINCOUNT``), so
    that back-to-back operators skip a sleep and a wake-up each: the demo's step ran 14-20 % faster
    on an idle 2-core machine, and 23 % slower beside one other busy process, hence only when idle."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:  # libgomp: a spin count overrides the policy's
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average on this platform: assume a busy machine
            return
    if load < IDLE_LOAD:
        env["GOMP_SPINCOUNT"] = str(IDLE_SPINCOUNT)


openmp_waiting()

# The command modules import only modules that load no torch at import time (config, presets,
# errors); each command imports the torch-based ones (engine, evaluation, detectors, data,
# checkpoints, viz, utils) inside its function, so that `assigndet --help` / `presets` stay fast
# and the OpenMP settings are made before torch loads. There is no import cycle to dodge.
from ..errors import InputError, UserError  # noqa: E402
from . import benchmark, browse, explain, export, plot, run, tools  # noqa: E402
from .common import DEMO_PRESET  # noqa: E402

#: the command modules, each with ``register(subparsers)``, in the order of ``--help``
COMMAND_MODULES = (run, tools, plot, browse, explain, benchmark, export)
#: what the command line reports as one line with exit code 2
USER_ERRORS = (UserError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assigndet", description="ATSS, PAA, Dynamic ATSS, Faster R-CNN (PAA RPN), IoU-Net: train, evaluate, "
                                      "predict, explain, benchmark, export.",
        epilog="Overrides are key=value pairs checked against the config schema, e.g. solver.base_lr=0.005. "
               "Add --debug to any command to see tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in _subcommands(parser):  # every --help shows each argument's default
        command.formatter_class = _DefaultsFormatter
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with the argument's default, where it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if not (d is None or d is False or d == [] or d == argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of every (nested) subcommand of ``parser``."""
    found = []
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subcommands(child)]
    return found


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value pairs may come after options (argparse stops collecting positionals there)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides") or args.command in ("presets", "data"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def _error_line(e: BaseException) -> str:
    msg = " ".join(str(e).split("\n")) if str(e) else type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return f"assigndet: error: {msg}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = _parse([a for a in argv if a != "--debug"])
    try:
        return int(args.func(args) or 0)
    except (*USER_ERRORS, FloatingPointError, KeyboardInterrupt) as e:
        if debug:
            traceback.print_exc()
        if isinstance(e, KeyboardInterrupt):
            print("assigndet: interrupted", file=sys.stderr)
            return 130
        if isinstance(e, FloatingPointError):  # a non-finite training loss: a failure, not a user error
            print(f"assigndet: error: {e}", file=sys.stderr)
            return 1
        print(_error_line(e), file=sys.stderr)
        return 2


_MOVED_TO_VIZ = ("draw_predictions", "plot_loss_curve", "IMAGE_SUFFIXES")


def __getattr__(name: str):
    """Deprecated (one release): ``assigndet.cli.draw_predictions``, ``plot_loss_curve`` and
    ``IMAGE_SUFFIXES`` are now in :mod:`assigndet.viz` (looked up on use: importing the CLI loads no torch)."""
    if name in _MOVED_TO_VIZ:
        from .. import viz

        warnings.warn(f"assigndet.cli.{name} moved to assigndet.viz.{name}", DeprecationWarning, stacklevel=2)
        return getattr(viz, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "build_parser", "DEMO_PRESET", "InputError", "USER_ERRORS"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
