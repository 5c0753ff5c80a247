"""The structure rules of the source tree (README "Development"): small units, at most one level
of inheritance of our own classes, every module importable. The import layers themselves are
checked by ``lint-imports`` in the test command."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import assigndet

SRC = Path(assigndet.__file__).parent
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(SRC)], prefix="assigndet.")
                  if m.name not in ("assigndet.zoo", "assigndet.__main__"))


def test_no_file_over_400_lines_and_no_function_over_60():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}() {n} lines")
    assert not too_long, too_long


def test_at_most_one_level_of_our_own_inheritance():
    deep = []
    for name in _modules():
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if not cls.__module__.startswith("assigndet"):
                continue
            for base in cls.__bases__:
                own = [b for b in base.__mro__[1:] if b.__module__.startswith("assigndet")]
                if base.__module__.startswith("assigndet") and own:
                    deep.append(f"{cls.__module__}.{cls.__qualname__} -> {base.__qualname__} -> {own[0].__qualname__}")
    assert not deep, sorted(set(deep))


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)
