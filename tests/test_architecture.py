"""The package layout of docs/ARCHITECTURE.md, checked on the source: imports point down
(apps → eval / distributed → search → cnn / bow → io → params / errors), the CLI's choices are the
library's constants, and the command line starts without torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "roiret"

# layer -> the layers it may import (besides itself); "root" is roiret/__init__.py
ALLOWED = {
    "params": set(),
    "errors": set(),
    "_kernels": {"errors"},
    "io": {"errors", "params", "root"},
    "cnn": {"io", "params", "errors", "_kernels"},
    "bow": {"io", "params", "errors", "_kernels"},
    "search": {"cnn", "bow", "io", "params", "errors", "_kernels", "root"},
    "eval": {"search", "cnn", "bow", "io", "params", "errors", "_kernels"},
    "distributed": {"search", "cnn", "bow", "io", "params", "errors", "_kernels", "root"},
    "apps": {"distributed", "eval", "search", "cnn", "bow", "io", "params", "errors", "_kernels", "root"},
}


def _layer(parts):
    """The layer of a module path inside roiret (``("search", "ranking")`` → ``"search"``)."""
    if not parts or parts[0] == "__version__":
        return "root"
    head = parts[0]
    return "_kernels" if head == "_core" else head


def _imports_of(src: str, pkg):
    """(line, target module parts inside roiret) of every roiret import in ``src``, a module
    of the package ``pkg`` (parts, e.g. ``["cnn"]``)."""
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = list(pkg[: len(pkg) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
                if node.module is None:  # from . import x  /  from .. import x
                    for alias in node.names:
                        yield node.lineno, target + [alias.name]
                else:
                    yield node.lineno, target
            elif node.module and node.module.split(".")[0] == "roiret":
                yield node.lineno, node.module.split(".")[1:]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "roiret":
                    yield node.lineno, alias.name.split(".")[1:]


def _violations(src: str, rel):
    own = _layer(rel)
    pkg = list(rel[:-1])
    for line, target in _imports_of(src, pkg):
        layer = _layer(target)
        if layer != own and layer not in ALLOWED[own]:
            yield f"line {line}: {own} imports roiret.{'.'.join(target)} ({layer})"


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)


def test_every_module_belongs_to_a_layer():
    layers = {_layer(p.relative_to(PKG).with_suffix("").parts) for p in _modules()}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    bad = list(_violations(path.read_text("utf-8"), path.relative_to(PKG).with_suffix("").parts))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "src, rel, ok",
    [
        ("from ..search.retriever import Retriever\n", ("cnn", "regions"), False),  # upwards
        ("from ..io.images import load_image\n", ("cnn", "regions"), True),
        ("from .. import bow\n", ("cnn", "regions"), False),  # sideways
        ("def f():\n    from roiret.apps import cli\n", ("search", "ranking"), False),  # lazy, absolute
        ("import roiret.eval\n", ("io", "folder"), False),
        ("from . import regions\n", ("cnn", "extractor"), True),
    ],
)
def test_the_rule_catches_wrong_imports(src, rel, ok):
    assert (not list(_violations(src, rel))) == ok


def test_cli_choices_are_the_library_constants():
    from roiret import params
    from roiret.apps.cli import build_parser
    from roiret.bow.features import FEATURE_KINDS
    from roiret.cnn.backbones import BACKBONES
    from roiret.cnn.descriptors import FEATURES
    from roiret.search.rerank import MODES

    assert tuple(sorted(BACKBONES)) == tuple(sorted(params.BACKBONES))
    assert FEATURES == params.FEATURES and FEATURE_KINDS == params.LOCAL_FEATURES and MODES == params.MODES
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    choices = {a.dest: tuple(a.choices) for a in sub["index"]._actions if a.choices}
    assert choices["backbone"] == params.BACKBONES and choices["feature"] == params.FEATURES
    assert {a.dest: tuple(a.choices) for a in sub["search"]._actions if a.choices}["mode"] == params.MODES


def test_help_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from roiret.apps.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        build_parser().parse_args(['--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'cv2', 'faiss') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_import_lets_openmp_threads_sleep_unless_the_user_chose(preset):
    """``import roiret`` sets OMP_WAIT_POLICY=PASSIVE before torch or faiss can load their
    OpenMP runtime; a value already set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sys, roiret\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == [preset or "PASSIVE", "False"]


def _code_lines(node: ast.AST) -> int:
    """Lines of a function without its docstring."""
    body = node.body  # type: ignore[attr-defined]
    doc = body[0] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else None
    skip = doc.end_lineno - doc.lineno + 1 if doc is not None and isinstance(doc.value.value, str) else 0
    return node.end_lineno - node.lineno + 1 - skip  # type: ignore[attr-defined]


def test_no_function_is_over_80_lines_of_code():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > 80:
                long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({_code_lines(node)} lines)")
    assert not long, long
    # the measure itself: a 3-line docstring is not counted, the body is
    src = 'def f():\n    """a\n    b\n    c"""\n' + "    x = 1\n" * 81
    assert _code_lines(ast.parse(src).body[0]) == 82
