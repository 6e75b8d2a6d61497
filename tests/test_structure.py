"""The shape of the code, checked: imports follow the flow data -> model -> objectives -> checkpoint ->
training -> uses, functions stay short, and none takes more than 7 parameters (scikit-learn style
constructors excepted: their parameters are the estimator's hyperparameters, by that library's convention).

Checkpoint sits before training: it is the storage format that training writes and every use reads, and it
imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaekit"
# stage of the flow -> module prefixes; a module may import its own stage and earlier ones only
STAGES = [
    ("base", ("vaekit.errors", "vaekit.config", "vaekit.fileio", "vaekit.batches", "vaekit.devices",
              "vaekit.progress")),
    ("data", ("vaekit.data",)),
    ("model", ("vaekit.model",)),
    ("objectives", ("vaekit.objectives",)),
    ("checkpoint", ("vaekit.checkpoint", "vaekit.hub")),
    ("training", ("vaekit.training",)),
    ("uses", ("vaekit",)),  # evaluation, generate, embedding, anomaly, plots, previews, estimator, serve, cli
]
MAX_LINES, MAX_PARAMS = 60, 7
SKLEARN_CONSTRUCTORS = {("estimator.py", "__init__"), ("detector.py", "__init__")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> int:
    for i, (_, prefixes) in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no stage")


def imported(tree: ast.AST, module: str) -> set[str]:
    """Every vaekit module that ``module`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vaekit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaekit"):
            out |= {_submodule(node.module, a.name) for a in node.names}
    return out - {module}


def _submodule(module: str, name: str) -> str:
    """``from module import name``: the module ``module.name`` when there is one (``from vaekit.data import
    images``), else ``module`` itself (``from vaekit.model import VAE``)."""
    path = PACKAGE.parent / f"{module}.{name}".replace(".", "/")
    return f"{module}.{name}" if path.with_suffix(".py").exists() or path.is_dir() else module


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if module_name(p) not in ("vaekit", "vaekit.__main__"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_import_goes_against_the_flow(path):
    module = module_name(path)
    against = sorted(m for m in imported(ast.parse(path.read_text()), module) if stage(m) > stage(module))
    assert not against, (f"{module} ({STAGES[stage(module)][0]}) imports {against} from a later stage of "
                         "data -> model -> objectives -> checkpoint -> training -> uses")


def test_the_rule_would_catch_a_model_that_reaches_down_the_flow():
    tree = ast.parse("from vaekit.training import loop\nimport vaekit.checkpoint\nfrom vaekit import evaluation\n")
    found = imported(tree, "vaekit.model.vae")
    assert {"vaekit.training.loop", "vaekit.checkpoint", "vaekit.evaluation"} <= found
    assert all(stage(m) > stage("vaekit.model.vae") for m in found)


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += [v.arg for v in (a.vararg, a.kwarg) if v is not None]
            yield node.name, node.end_lineno - node.lineno + 1, len(params), node.lineno


def test_functions_are_short_and_take_few_parameters():
    long, wide = [], []
    for path in SOURCES:
        for name, lines, params, lineno in functions(path):
            where = f"{path.relative_to(PACKAGE)}:{lineno} {name}"
            if lines > MAX_LINES:
                long.append(f"{where} ({lines} lines)")
            if params > MAX_PARAMS and (path.name, name) not in SKLEARN_CONSTRUCTORS:
                wide.append(f"{where} ({params} parameters)")
    assert not long, f"functions over {MAX_LINES} lines: {long}"
    assert not wide, f"functions with over {MAX_PARAMS} parameters: {wide}"
