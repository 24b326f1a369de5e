"""Imports only point down the layers (ast only: no module is imported, torch is not needed).

0 base (errors, config, fileio, validation, rng, stats, threads, autodiff, _version) -> 1 data ->
2 models, objectives, adapters -> 3 training, attacks -> 4 robustness, metrics ->
5 evaluation, report -> 6 studies, bench, sweep -> 7 cli, demo, the package's public API.

A module may import its own layer or lower ones. No robvae import may sit inside a function body
(the usual way to dodge an import cycle); only the optional extras may be imported lazily, and
never at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "robvae"

#: first component below robvae -> layer. A new module must be added here (the test says so).
LAYERS: dict[str, int] = {
    "errors": 0, "config": 0, "fileio": 0, "validation": 0, "rng": 0, "stats": 0, "threads": 0, "_version": 0,
    "autodiff": 0,
    "data": 1,
    "models": 2, "objectives": 2, "adapters": 2,
    "training": 3, "attacks": 3,
    "robustness": 4, "metrics": 4,
    "evaluation": 5, "report": 5,
    "studies": 6, "bench": 6, "sweep": 6,
    "cli": 7, "demo": 7, "__main__": 7, "": 7,  # "": robvae/__init__.py, the public API
}
#: optional third-party extras (pyproject optional-dependencies): imported lazily (inside a
#: function), never at module level
OPTIONAL = ("ray", "pythae", "diffusers", "mkdocs")  # torchmetrics is a core dependency (SSIM)


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    assert parts[0] == "robvae"
    return LAYERS.get(parts[1] if len(parts) > 1 else "")


def _target(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The robvae modules an ``from ... import ...`` statement loads ([] for third-party)."""
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod != "robvae" and not mod.startswith("robvae."):
        return []
    # "from robvae.pkg import sub" loads the submodule sub when there is one
    return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]


def _imports(module: str, path: Path):
    """(line, target module, inside a function?) for every robvae import, and the top-level
    imports of optional extras."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_func: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_func.update(id(sub) for sub in ast.walk(node) if sub is not node)
    found, extras = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for t in _target(module, path, node):
                found.append((node.lineno, t, id(node) in in_func))
            if not node.level and (node.module or "").split(".")[0] in OPTIONAL and id(node) not in in_func:
                extras.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "robvae" or a.name.startswith("robvae."):
                    found.append((node.lineno, a.name, id(node) in in_func))
                elif a.name.split(".")[0] in OPTIONAL and id(node) not in in_func:
                    extras.append((node.lineno, a.name))
    return found, extras


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"add these modules to tests/test_layers.py LAYERS (and to the docs' layer list): {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_sit_at_module_level(module):
    path = MODULES[module]
    mine = _layer(module)
    if mine is None:
        pytest.fail(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")
    found, extras = _imports(module, path)
    rel = path.relative_to(SRC.parent)
    bad = []
    for line, target, lazy in sorted(set(found)):
        theirs = _layer(target)
        if theirs is None:
            bad.append(f"{rel}:{line}: imports {target}, which has no layer")
        elif theirs > mine:
            bad.append(f"{rel}:{line}: layer {mine} imports {target} (layer {theirs}): imports must point down")
        if lazy:
            bad.append(f"{rel}:{line}: imports {target} inside a function; import it at the top of the module "
                       "(a cycle means a layer is wrong)")
    for line, name in extras:
        bad.append(f"{rel}:{line}: imports the optional extra {name} at module level; import it where it is used")
    assert not bad, "\n".join(dict.fromkeys(bad))


def test_the_checker_catches_what_it_should(tmp_path):
    """The rules above can fail: an upward import and a function-body import are both found."""
    p = tmp_path / "mod.py"
    p.write_text("from ..evaluation import evaluate\n\ndef f():\n    from ..stats import median\n    import ray\n")
    found, extras = _imports("robvae.data.mod", p)
    assert (1, "robvae.evaluation", False) in found and (4, "robvae.stats", True) in found and not extras
    assert _layer("robvae.evaluation") > _layer("robvae.data.mod")
    p.write_text("import ray\nfrom robvae import stats\n")
    found, extras = _imports("robvae.cli.mod", p)
    assert extras == [(1, "ray")] and found == [(2, "robvae.stats", False)]
