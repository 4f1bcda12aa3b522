"""The package's layering: no import cycle among ila's modules, and imports only point down the layers.

    0  ila.errors, ila.version, ila.registry, ila.labels, ila.safe_load, ila.atomic  (nothing of ila but errors)
    1  ila.data.*   |   ila.models.*                                         (neither imports the other)
    2  ila.presets, ila.config                                               (the typed config)
    3  ila.weights.*                                                         (every source of weights -> a model)
    4  ila.engine.*, ila.info                                                (training, inference, reports)
    5  ila.hub, ila.pipeline, ila.export, ila.convert, ila.cli, ila.demo, ila (the public API), ila.__main__

Every import statement counts, module level or inside a function; a `from ila import X` names module `ila.X` when X
is one, else the package `ila` itself (the top). Each module is also imported alone in a fresh interpreter
(forked after the third-party libraries are loaded, so only ila's own import order is exercised).
"""
from __future__ import annotations

import ast
import importlib
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ila"
LAYERS = [("ila.errors", "ila.version", "ila.registry", "ila.labels", "ila.safe_load", "ila.atomic",
           "ila.jsonsafe"),
          ("ila.data", "ila.models"),
          ("ila.presets", "ila.config"),
          ("ila.weights",),
          ("ila.engine", "ila.info"),
          ("ila.hub", "ila.pipeline", "ila.serve", "ila.export", "ila.convert", "ila.cli", "ila.demo", "ila.__main__", "ila")]
# imports allowed inside functions: optional extras (onnx, onnxruntime, onnxscript, torchcodec, wandb) and heavy
# libraries only a few paths need (matplotlib for pictures, timm for schedules and resampling, open_clip for the
# tokenizer and CLIP names, huggingface_hub for Hub ids)
LAZY_ALLOWED_OUTSIDE = {"matplotlib", "onnx", "onnxruntime", "onnxscript", "torchcodec", "wandb", "open_clip",
                        "huggingface_hub", "timm", "starlette", "uvicorn"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(name: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix != "ila" and name.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[0]


def imports(names: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported ila module, line, inside a function)]."""
    out: dict[str, list] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        edges = []
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        typing_only = {id(n) for f in ast.walk(tree) if isinstance(f, ast.If) and ast.unparse(f.test).endswith(
            "TYPE_CHECKING") for n in ast.walk(f)}             # annotations only: never imported at run time
        for node in ast.walk(tree):
            targets = []
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "ila"]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ila":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in names else node.module)
            for target in targets:
                while target not in names:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    edges.append((target, node.lineno, id(node) in inner))
        out[name] = edges
    return out


def test_imports_point_down_the_layers_and_form_no_cycle():
    names = modules()
    graph = imports(names)
    wrong = [f"{m}:{line} imports {t} (layer {layer(t)} above layer {layer(m)})"
             for m, edges in graph.items() for t, line, _ in edges if layer(t) > layer(m)]
    assert not wrong, "\n".join(wrong)
    sideways = [f"{m}:{line} imports {t}" for m, edges in graph.items() for t, line, _ in edges
                if {m.split(".")[1] if "." in m else "", t.split(".")[1] if "." in t else ""} == {"data", "models"}]
    assert not sideways, "data and models must not import each other:\n" + "\n".join(sideways)
    # no cycle: a depth-first search over every edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t, _, _ in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_imports_inside_functions_are_only_for_optional_or_heavy_libraries():
    """ila's own modules are imported at the top of a module; a function-level import is for a third-party
    library few paths need (listed in LAZY_ALLOWED_OUTSIDE)."""
    names = modules()
    inner_ila = [f"{m}:{line} imports {t} inside a function" for m, edges in imports(names).items()
                 for t, line, inner in edges if inner]
    assert not inner_ila, "\n".join(inner_ila)
    others = []
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                for mod in mods:
                    if mod.split(".")[0] != "ila" and mod not in LAZY_ALLOWED_OUTSIDE \
                            and mod.split(".")[0] not in LAZY_ALLOWED_OUTSIDE:
                        others.append(f"{name}:{node.lineno} imports {mod} inside a function")
    assert not others, "\n".join(others)


def _import_alone(name: str, queue) -> None:
    try:
        importlib.import_module(name)
        queue.put((name, ""))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put((name, f"{type(e).__name__}: {e}"))


@pytest.mark.skipif(sys.platform != "linux", reason="forks a fresh interpreter state per module (Linux)")
def test_each_module_imports_alone():
    import numpy  # noqa: F401 - third-party libraries loaded once, before the forks
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import yaml  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    failures = []
    for name in modules():
        if name == "ila.__main__":                      # `python -m ila`: running it is its import
            continue
        queue = ctx.Queue()
        child = ctx.Process(target=_clean_then_import, args=(name, queue))
        child.start()
        child.join(120)
        got = queue.get(timeout=5) if child.exitcode == 0 else (name, f"exit code {child.exitcode}")
        if got[1]:
            failures.append(f"{got[0]}: {got[1]}")
    assert not failures, "\n".join(failures)


def _clean_then_import(name: str, queue) -> None:
    for loaded in [m for m in sys.modules if m == "ila" or m.startswith("ila.")]:
        del sys.modules[loaded]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _import_alone(name, queue)
