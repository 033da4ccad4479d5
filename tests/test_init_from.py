"""Continued pretraining from Hugging Face weights: ``checkpoint.init_from: hf:DIR`` (or ``model.init_from``).

A tiny in-process run is exported (Llama, Phi-3, a sharded copy) and loaded back: the new run's step-0
validation loss is the source run's final one; misfit architectures and tensors are refused by name."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from pretrain.config_loader import ConfigError
from pretrain.export import ExportError, export, load_gpt
from pretrain.hf import HFError, hf_config_differences, load_hf
from tests.conftest import ROOT, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
QUIET = dict(log=lambda *a: None)


def _overrides(tiny_data: Path, run_dir: Path, **extra) -> list[str]:
    return tiny_overrides(tiny_data, run_dir, **{
        "train.global_batch_size": 4, "eval.max_samples": 8, "logging.tensorboard": False,
        "eval.per_source": False, **extra})


@pytest.fixture(scope="module")
def source(tiny_data, tmp_path_factory) -> tuple[Path, Path, float]:
    """(run dir, its Llama export, its final val_loss): two trained steps of the tiny preset."""
    from pretrain import train

    root = tmp_path_factory.mktemp("init_from")
    result = train(DEMO, _overrides(tiny_data, root / "src", **{
        "train.max_steps": 2, "eval.interval": 2, "checkpoint.interval": 2, "eval.at_start": False}))
    assert result.code == 0 and result.val_loss is not None
    out = export(result.run_dir, root / "llama", **QUIET)
    return result.run_dir, out, result.val_loss


def _val_losses(run_dir: Path) -> dict[int, float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def test_init_from_hf_continues_the_exported_model(source, tiny_data, tmp_path):
    from pretrain import train

    src_run, exported, src_val = source
    result = train(DEMO, _overrides(tiny_data, tmp_path / "cont", **{
        "model.init_from": f"hf:{exported}", "train.max_steps": 1, "eval.interval": 0}))
    assert result.code == 0 and result.step == 1
    vals = _val_losses(result.run_dir)
    assert vals[0] == pytest.approx(src_val, abs=1e-5)  # step 0: the source's weights, on the same data
    lineage = json.loads((result.run_dir / "lineage.json").read_text())
    sha = hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()
    assert lineage == {"init_from": str(exported.resolve()), "format": "llama",
                       "weights_sha256": {"model.safetensors": sha}, "step": 0}
    saved = json.loads(json.dumps(__import__("yaml").safe_load((result.run_dir / "config.yaml").read_text())))
    assert saved["checkpoint"]["init_from"] == f"hf:{exported}" and "init_from" not in saved["model"]


def test_init_from_phi3_and_sharded_round_trip(source, tmp_path):
    from safetensors.torch import load_file, save_file

    src_run, exported, _ = source
    ours, _, _ = load_gpt(src_run)
    want = ours.state_dict()
    phi3 = export(src_run, tmp_path / "phi3", fmt="phi3", **QUIET)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(exported / "config.json", sharded / "config.json")
    tensors = load_file(str(exported / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    for directory, n_files in ((phi3, 1), (sharded, 2)):
        sd, files = load_hf(directory, ours.config)
        assert len(files) == n_files and sd.keys() == want.keys()
        for k, v in want.items():
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0, msg=k)


def test_init_from_refuses_misfits(source, tiny_data, tmp_path):
    import dataclasses

    from pretrain import train
    from pretrain.model.config import MuPConfig

    src_run, exported, _ = source
    config = load_gpt(src_run)[0].config
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    # a tensor of the wrong shape and a missing one are named, with the file and the shapes
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(7, 64)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    tensors["model.layers.0.extra.weight"] = torch.zeros(1)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(ExportError) as e:
        load_hf(bad, config)
    msg = str(e.value)
    assert f"{bad / 'model.safetensors'}: tensor model.layers.1.mlp.up_proj.weight has shape [7, 64], expected [192, 64]" in msg
    assert "missing tensor model.layers.0.self_attn.k_proj.weight" in msg
    assert "unexpected tensor model.layers.0.extra.weight" in msg
    # a config.json of another architecture is refused, listing every difference (before any work in a run)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(hidden_size=128, rope_theta=500000.0, tie_word_embeddings=True)
    (bad / "config.json").write_text(json.dumps(cfg))
    diffs = hf_config_differences(config, bad)
    assert [d.split(":")[0] for d in diffs] == ["hidden_size", "rope_theta", "tie_word_embeddings"], diffs
    with pytest.raises(ConfigError, match=r"checkpoint.init_from.*hidden_size: 128 in config.json, expected 64"):
        train(DEMO, _overrides(tiny_data, tmp_path / "x", **{"checkpoint.init_from": f"hf:{bad}"}))
    # muP cannot be unfolded from plain weights
    mup = dataclasses.replace(config, mup=MuPConfig(base_width=32))
    assert any("model.mup is set" in d for d in hf_config_differences(mup, exported))
    with pytest.raises(ConfigError, match="'hf:DIR'"):
        train(DEMO, _overrides(tiny_data, tmp_path / "y", **{"checkpoint.init_from": str(exported)}))


def test_unreadable_hf_files_are_named(source, tiny_data, tmp_path):
    """A config.json, index or weight file that cannot be read is an HFError naming the file (the run config's
    check reports it as a bad checkpoint.init_from), never a bare JSON or safetensors exception."""
    from pretrain import train

    src_run, exported, _ = source
    config = load_gpt(src_run)[0].config
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    cfg_text = (bad / "config.json").read_text()
    for content, expected in (("{not json", "cannot be read as JSON"), ("[1, 2]", "holds a list"),
                              ('{"model_type": ["llama"]}', r"model_type = \['llama'\]: expected 'llama' or 'phi3'")):
        (bad / "config.json").write_text(content)
        with pytest.raises(HFError, match=expected) as e:
            hf_config_differences(config, bad)
        assert str(bad / "config.json") in str(e.value)
    with pytest.raises(ConfigError, match=r"checkpoint.init_from.*a Hugging Face model directory.*config.json"):
        train(DEMO, _overrides(tiny_data, tmp_path / "x", **{"checkpoint.init_from": f"hf:{bad}"}))
    (bad / "config.json").write_text(cfg_text)
    (bad / "model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(HFError, match="cannot be read as safetensors") as e:
        load_hf(bad, config)
    assert str(bad / "model.safetensors") in str(e.value)
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(HFError, match="weight_map is list; expected an object"):
        load_hf(bad, config)
    assert ExportError is HFError  # pretrain.export's callers catch the same errors


def test_hf_module_imports_only_lower_layers():
    """pretrain.hf (every import, module level or in a function) reaches only the model package, the bottom
    layer and external libraries: never a command, the run config, the trainer, run directories, checkpoints
    or data_prep."""
    import ast

    import pretrain.hf

    allowed = ("pretrain.model", "pretrain.config_loader", "pretrain.errors", "pretrain.hardware",
               "pretrain.distributed", "pretrain.faults", "pretrain.outputs")
    tree = ast.parse(Path(pretrain.hf.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [("pretrain." if node.level else "") + (node.module or "") for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)]
    assert "pretrain.model.config" in imported and "safetensors" in imported
    ours = [m for m in imported if m.split(".")[0] in ("pretrain", "data_prep")]
    above = [m for m in ours if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not above, f"pretrain.hf imports {above}: only {', '.join(allowed)} and external libraries are allowed"
