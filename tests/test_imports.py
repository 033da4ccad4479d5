"""Import hygiene, each check in a fresh interpreter (the test process has torch loaded already).

* The run config, the model package and its config leaf import no torch: the launch
  scripts and config tools read and validate a run without loading it.
* The model modules import alone, in any order (no import cycle gpt <-> init <-> mup).
"""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in the repository root (so ``pretrain`` is this checkout's)."""
    prologue = textwrap.dedent(f"""
        import sys
        import pretrain
        assert pretrain.__file__.startswith({str(ROOT)!r}), pretrain.__file__
    """)
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["pretrain.run_config", "pretrain.model", "pretrain.model.config",
                                    "pretrain.model.mup", "pretrain.model.presets"])
def test_module_does_not_import_torch(module):
    proc = run_python(f"""
        import {module}
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, "importing {module} imported torch"
    """)
    assert proc.returncode == 0, proc.stderr


def test_model_presets_and_lazy_reexports_without_torch():
    proc = run_python("""
        from pretrain.model import GPTConfig, MuPConfig, get_preset
        from pretrain.model.config import GPTConfig as Leaf
        assert GPTConfig is Leaf
        cfg = get_preset("mup-111m")
        assert isinstance(cfg.mup, MuPConfig) and cfg.num_params() > 0
        assert cfg.validate() == []
        assert "torch" not in sys.modules
    """)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", ["pretrain.model.gpt", "pretrain.model.init", "pretrain.model.mup"])
def test_model_module_imports_alone(module):
    proc = run_python(f"""
        import {module}
        from pretrain.model.config import GPTConfig
        from pretrain.model.gpt import GPT, GPTConfig as Reexported
        assert Reexported is GPTConfig
        assert isinstance(GPTConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2).build(), GPT)
    """)
    assert proc.returncode == 0, proc.stderr


def test_package_root_loads_only_its_version():
    """``import pretrain`` loads nothing of the package but the version leaf (``train`` imports the Trainer
    when called), and the version is the installed distribution's (pyproject.toml reads pretrain/_version.py)."""
    proc = run_python("""
        from importlib.metadata import version

        from pretrain._version import __version__
        loaded = sorted(m for m in sys.modules if m.startswith("pretrain."))
        assert loaded == ["pretrain._version"], loaded
        assert pretrain.__version__ == __version__ == version("pretrain"), (pretrain.__version__, version("pretrain"))
    """)
    assert proc.returncode == 0, proc.stderr
