"""The type stub roiret/_core.pyi must describe the native module exactly: same names,
same parameters in the same order, same defaults present."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import roiret
from roiret import _core

STUB = Path(roiret.__file__).with_name("_core.pyi")


def stub_tree():
    return ast.parse(STUB.read_text())


def stub_signatures(body):
    out = {}
    for node in body:
        if isinstance(node, ast.FunctionDef):
            args = [a.arg for a in node.args.args]
            n_defaults = len(node.args.defaults)
            is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
            out[node.name] = "property" if is_property else (args, n_defaults)
    return out


def runtime_signature(func):
    """Parameter names and number of defaults from pybind11's docstring signature."""
    first = func.__doc__.strip().splitlines()[0]
    m = re.match(r"^\w+\((.*)\)\s*->", first)
    assert m, first
    params = [p.strip() for p in re.split(r",(?![^\[]*\])", m.group(1)) if p.strip()]
    names = [p.split(":")[0].strip() for p in params]
    n_defaults = sum("=" in p for p in params)
    return names, n_defaults


def public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def test_module_level_names_match():
    tree = stub_tree()
    stub_names = set(stub_signatures(tree.body))
    stub_names |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    stub_names |= {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert stub_names == public(_core)


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in dir(_core)
        if not n.startswith("_") and callable(getattr(_core, n)) and not isinstance(getattr(_core, n), type)
    ),
)
def test_function_signatures_match(name):
    stub = stub_signatures(stub_tree().body)[name]
    assert stub == runtime_signature(getattr(_core, name)), name


def test_class_members_match():
    cls = next(n for n in stub_tree().body if isinstance(n, ast.ClassDef) and n.name == "InvertedFile")
    stub = stub_signatures(cls.body)
    runtime = public(_core.InvertedFile) | {"__init__", "__len__", "__contains__"}
    assert set(stub) == runtime
    for name, sig in stub.items():
        member = getattr(_core.InvertedFile, name)
        if sig == "property":
            assert isinstance(member, property), name
            continue
        names, n_defaults = runtime_signature(member)
        if names and names[0] == "self":
            pass
        elif sig[0] and sig[0][0] == "self":
            names = ["self"] + names
        assert (names, n_defaults) == sig, name
