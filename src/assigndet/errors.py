"""The user errors: each one is a mistake of the input (a preset name, an override, a file, a
dataset, a target), reported by the command line as one line and exit code 2.

They live here, at the bottom of the import layers, so that every layer raises them without
importing the layers above; the modules that raise them re-export them under their old names
(``assigndet.config.ConfigError``, ``assigndet.checkpoints.CheckpointError``, ...).
"""
from __future__ import annotations


class UserError(ValueError):
    """Base of the errors that the command line reports as one line (exit code 2)."""


class ConfigError(UserError):
    """A bad preset name, override key or value."""


class CheckpointError(UserError):
    """A missing, unreadable or incompatible checkpoint file."""


class DatasetError(UserError):
    """A missing or malformed dataset file, image or annotation (names the culprit)."""


class TargetError(UserError):
    """Malformed training targets (names the image)."""


class InputError(UserError):
    """A bad command-line input (image path, weights file, ...)."""


__all__ = ["UserError", "ConfigError", "CheckpointError", "DatasetError", "TargetError", "InputError"]
