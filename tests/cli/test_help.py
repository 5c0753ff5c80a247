"""The command line as a newcomer meets it: every argument of every subcommand documented."""
from __future__ import annotations

import argparse
import subprocess
import sys

from assigndet.cli import _subcommands, build_parser


def test_every_argument_of_every_subcommand_has_help():
    missing = []
    for command in _subcommands(build_parser()):
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help and action.help.strip()):
                missing.append(f"{command.prog}: {action.dest}")
    assert not missing, missing


def test_help_shows_defaults_and_loads_no_torch():
    code = ("import sys; from assigndet.cli import main\n"
            "try:\n    main(['data', 'shapes', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "training images (default: 1000)" in out and "(default: 0)" in out
    assert out.strip().endswith("NO TORCH")
