"""The package's layers (import-linter contracts in pyproject.toml), its console scripts, and ruff.

``lint-imports`` reads the source, imports none of it: each check here takes about a second.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

PACKAGES = ("pretrain", "data_prep", "experiments")
# `if __name__ == "__main__"` modules that are not commands a user runs (started by a command)
INTERNAL_MAINS = {"data_prep.worker", "experiments.worker"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _contract(contract_id: str) -> dict:
    contracts = {c["id"]: c for c in _pyproject()["tool"]["importlinter"]["contracts"]}
    return contracts[contract_id]


def _tool(name: str) -> str:
    """A console script of this interpreter's environment (the venv's bin), else from PATH."""
    path = Path(sys.executable).parent / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH: pip install -e '.[test]' -c constraints.txt")
    return found


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (its pyproject.toml; the packages found from ``root``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["COLUMNS"] = "1000"  # one line per contract in the summary
    return subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def contract_states(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """``{contract id: "KEPT" | "BROKEN"}`` from lint-imports' summary."""
    by_name = {c["name"]: c["id"] for c in _pyproject()["tool"]["importlinter"]["contracts"]}
    states = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(.+) (KEPT|BROKEN)( \(.*\))?$", line.strip())
        if m and m.group(1) in by_name:
            states[by_name[m.group(1)]] = m.group(2)
    return states


def test_import_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, f"lint-imports found imports against the layers:\n{proc.stdout[-6000:]}{proc.stderr}"
    contracts = [c["id"] for c in _pyproject()["tool"]["importlinter"]["contracts"]]
    assert contract_states(proc) == dict.fromkeys(contracts, "KEPT"), proc.stdout


def _copy_tree(dest: Path) -> None:
    """The packages' sources and pyproject.toml (and the pretrain.py launcher beside them) under ``dest``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(ROOT / "pretrain.py", dest / "pretrain.py")


@pytest.mark.parametrize("module, line, broken", [
    # a lazy (function-level) upward import: model -> trainer
    ("pretrain/model/presets.py", "def _upward():\n    import pretrain.trainer  # noqa\n", "pretrain-layers"),
    # a leaf reaching the package root (whose train() imports the Trainer)
    ("pretrain/outputs.py", "from pretrain import train as _train  # noqa\n", "pretrain-root"),
    # data_prep above the leaves of pretrain
    ("data_prep/units.py", "def _upward():\n    from pretrain.run_config import RunConfig  # noqa\n", "data-prep-below"),
    # pretrain importing the experiments harness
    ("pretrain/plot.py", "def _upward():\n    import experiments.stats  # noqa\n", "experiments-on-top"),
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, broken):
    _copy_tree(tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + "\n\n" + line)
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert contract_states(proc)[broken] == "BROKEN", proc.stdout[-3000:]


def test_data_prep_is_refused_every_layer_above_the_leaves():
    """The data_prep contract's forbidden list is exactly pretrain's layers above the leaf layer."""
    layers = _contract("pretrain-layers")
    assert layers["exhaustive"] is True
    names = [[m.strip().strip("()") for m in layer.replace("|", ":").split(":")] for layer in layers["layers"]]
    above_leaves = {f"pretrain.{m}" for layer in names[:-1] for m in layer}
    assert set(_contract("data-prep-below")["forbidden_modules"]) == above_leaves
    # and every module of pretrain/ has its layer (what `exhaustive` makes lint-imports check too)
    children = {p.stem for p in (ROOT / "pretrain").glob("*.py") if p.stem != "__init__"}
    children |= {p.parent.name for p in (ROOT / "pretrain").glob("*/__init__.py")}
    assert children == {m for layer in names for m in layer}


def _main_modules() -> set[str]:
    """Every module of the packages with an ``if __name__ == "__main__":`` block (a ``python -m`` command)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in tree.body:
                if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                        and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
                    found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_command_has_a_console_script():
    scripts = _pyproject()["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        path = ROOT / Path(*module.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        assert path.is_file(), f"console script {name} = {target}: no {path}"
        defined = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in defined, f"console script {name} = {target}: {path} defines no {func}()"
        targets[module] = name
    missing = _main_modules() - INTERNAL_MAINS - set(targets)
    assert not missing, f"`python -m` commands without a console script in pyproject.toml: {sorted(missing)}"


def test_the_installed_console_scripts_are_pyprojects():
    """The environment was installed from this pyproject.toml (setup_env.sh reinstalls when it changes)."""
    from importlib.metadata import distribution

    dist = distribution("pretrain")
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert installed == _pyproject()["project"]["scripts"]


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
