"""Continued pretraining from Hugging Face weights: ``checkpoint.init_from: hf:DIR`` (or ``model.init_from``).

A tiny in-process run is exported (Llama, Phi-3, a sharded copy) and loaded back: the new run's step-0
validation loss is the source run's final one; misfit architectures and tensors are refused by name.

Weights-only starts from our own checkpoints (``checkpoint.init_from: PATH``, ``checkpoint.load_optimizer_state``)
reuse the same two-step source run: an AdamW parent, SGD children under ZeRO 1/2/3, weights compared bit for bit."""

from __future__ import annotations

import contextlib
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


# -- weights-only starts from our own checkpoints (checkpoint.init_from: PATH, checkpoint.load_optimizer_state) ----

def _parent_ckpt(source) -> Path:
    return source[0] / "checkpoints" / "step_00000002"


def _parent_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from pretrain.checkpoint import CheckpointDir

    ckpts, tag = CheckpointDir.open(ckpt)
    return ckpts.fp32_weights(tag)


@pytest.fixture(scope="module")
def parent_weights(source) -> dict[str, torch.Tensor]:
    return _parent_weights(_parent_ckpt(source))


def _sgd(tiny_data: Path, run_dir: Path, stage: int = 2, **extra) -> list[str]:
    """A child with plain SGD (the parent trained with AdamW), in fp32 so the engine's weights are the loaded ones."""
    return _overrides(tiny_data, run_dir, **{
        "optimizer.name": "sgd", "optimizer.lr": 0.05, "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
        "deepspeed.config": f"ds_configs/zero{stage}.json", "train.precision": "fp32", "train.max_steps": 3,
        "schedule.warmup_steps": 1, "eval.interval": 0, "checkpoint.interval": 0, **extra})


@contextlib.contextmanager
def _trainer(overrides: list[str]):
    """A Trainer of ``overrides`` set up in this process (a world of one), torn down as pretrain.train() does."""
    import deepspeed.comm

    from pretrain.distributed import init_distributed, release_shared_memory
    from pretrain.run_config import load_and_resolve
    from pretrain.trainer import Trainer, _world_of_one

    threads = torch.get_num_threads()
    with _world_of_one():
        cfg, ds_config = load_and_resolve(DEMO, overrides, 1)
        dist = init_distributed(1)
        trainer = Trainer(cfg, ds_config, dist)
        try:
            yield trainer.setup()
        finally:
            trainer.close(restore_signals=True)
            release_shared_memory(dist)
            deepspeed.comm.destroy_process_group()
            torch.set_num_threads(threads)


def _engine_weights(engine) -> dict[str, torch.Tensor]:
    """The engine's full weights (gathered from their ZeRO-3 partitions), by state-dict name."""
    import deepspeed

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=hasattr(next(iter(params.values())), "ds_id")):
        return {k: v.detach().clone() for k, v in params.items()}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) <= set(want), sorted(set(got) - set(want))
    for k, v in got.items():
        assert v.dtype == torch.float32 and torch.equal(v, want[k].to(v.dtype)), f"{k} differs from the checkpoint's"


def _sgd_state(engine) -> tuple[type, list[str]]:
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    keys = sorted({k for state in base.state.values() for k, v in state.items() if v is not None})
    return type(base), keys


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_init_from_our_checkpoint_adamw_parent_sgd_child(source, parent_weights, tiny_data, tmp_path, stage):
    """An AdamW parent's weights into an SGD child under ZeRO 1/2/3: bit for bit at step 0, no Adam state, the
    child's own schedule from step 0, lineage recorded."""
    ckpt = _parent_ckpt(source)
    run_dir = tmp_path / "child"
    with _trainer(_sgd(tiny_data, run_dir, stage, **{"checkpoint.init_from": str(ckpt)})) as trainer:
        assert (trainer.state.step, trainer.state.tokens) == (0, 0) and trainer.start is None
        _assert_same(_engine_weights(trainer.engine), parent_weights)
        assert _sgd_state(trainer.engine) == (torch.optim.SGD, [])
        result = trainer.fit()
        assert result.code == 0 and result.step == 3
        kind, keys = _sgd_state(trainer.engine)
        assert kind is torch.optim.SGD and not {"exp_avg", "exp_avg_sq"} & set(keys), keys
        schedule, lr = trainer.cfg.build_schedule(), trainer.cfg.optimizer.lr
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["step"] >= 1]
    assert [r["step"] for r in trained] == [1, 2, 3]
    assert [r["lr"] for r in trained] == pytest.approx([lr * schedule(s) for s in range(3)], abs=1e-15)
    assert trained[0]["tokens"] == 4 * 64  # the counters start at 0, not at the parent's
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["init_from"] == str(ckpt.resolve()) and lineage["step"] == 2 and lineage["weights_only"] is True
    assert (lineage["parent_optimizer"], lineage["optimizer"]) == ("adamw", "sgd")
    assert "parent_run_dir" not in lineage  # its curve does not continue the parent's (pretrain.forecast)
    assert lineage["config_diff"]["optimizer.name"] == ["adamw", "sgd"]
    assert json.loads((run_dir / "checkpoints" / "step_00000003" / "COMPLETE").read_text())["step"] == 3


def test_branch_without_optimizer_state(source, parent_weights, tiny_data, tmp_path):
    """checkpoint.load_optimizer_state=false: the branch takes the parent's weights and counters (step, tokens,
    data position) with a fresh optimizer of another kind."""
    ckpt = _parent_ckpt(source)
    run_dir = tmp_path / "branch"
    ov = _sgd(tiny_data, run_dir, **{"checkpoint.branch_from": str(ckpt), "checkpoint.load_optimizer_state": "false",
                                     "train.max_steps": 3})
    with _trainer(ov) as trainer:
        assert (trainer.state.step, trainer.state.tokens) == (2, 2 * 4 * 64)
        _assert_same(_engine_weights(trainer.engine), parent_weights)
        assert _sgd_state(trainer.engine) == (torch.optim.SGD, [])
        assert trainer.fit().step == 3
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["step"] == 2 and lineage["optimizer_state"] == "fresh" and lineage["weights_only"] is True
    assert lineage["parent_checkpoint"] == str(ckpt.resolve())


def test_init_from_a_merged_checkpoint(source, parent_weights, tiny_data, tmp_path):
    from pretrain.checkpoint import CheckpointDir
    from pretrain.merge import merge

    ckpts, tag = CheckpointDir.open(_parent_ckpt(source))
    merged = merge(ckpts, [tag], "decay:1-sqrt", tmp_path / "merged", log=lambda *a: None)
    run_dir = tmp_path / "child"
    with _trainer(_sgd(tiny_data, run_dir, **{"checkpoint.init_from": str(merged), "train.max_steps": 1})) as trainer:
        assert trainer.state.step == 0
        _assert_same(_engine_weights(trainer.engine), parent_weights)  # one checkpoint: weight 1
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["merged"]["method"] == "decay:1-sqrt" and lineage["init_from"] == str(merged.resolve())


@pytest.mark.distributed
def test_init_from_under_zero3_on_two_ranks(source, parent_weights, tiny_data, tmp_path):
    """Two gloo ranks, ZeRO-3: the weights are partitioned after loading. The child's one update runs at D2Z's
    last LR multiplier, 0, so the checkpoint it saves holds the loaded weights: bit for bit the parent's."""
    from tests.conftest import run_ranks

    _, _, src_val = source
    run_dir = tmp_path / "z3"
    ov = _sgd(tiny_data, run_dir, 3, **{"checkpoint.init_from": str(_parent_ckpt(source)), "train.max_steps": 1,
                                        "schedule.warmup_steps": 0, "train.micro_batch_size": 1})
    res = run_ranks(["--config", DEMO, *ov], 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["val_loss"] == pytest.approx(src_val, abs=1e-4)
    assert [r["lr"] for r in records if r["step"] == 1] == [0.0]
    _assert_same(_parent_weights(run_dir / "checkpoints" / "step_00000001"), parent_weights)
    assert json.loads((run_dir / "lineage.json").read_text())["step"] == 2


def test_bad_init_from_is_refused_writing_nothing(source, tiny_data, tmp_path):
    from pretrain import train
    from pretrain.trainer import LaunchError

    ckpt = _parent_ckpt(source)
    incomplete = tmp_path / "copy" / "step_00000002"
    shutil.copytree(ckpt, incomplete)
    (incomplete / "COMPLETE").unlink()
    run_dir = tmp_path / "child"
    cases = [
        ({"checkpoint.init_from": str(tmp_path / "nowhere" / "step_00000002")}, "not a complete checkpoint"),
        ({"checkpoint.init_from": str(incomplete)}, rf"{incomplete}: not a complete checkpoint"),
        ({"checkpoint.init_from": str(ckpt.parent)}, "expected a step_NNNNNNNN directory"),
        ({"checkpoint.init_from": str(ckpt), "model.n_layers": 3}, r"model.n_layers: 2 -> 3"),
        ({"checkpoint.init_from": str(ckpt), "checkpoint.branch_from": str(ckpt)}, "null when branch_from is set"),
        ({"checkpoint.load_optimizer_state": "false"}, "checkpoint.load_optimizer_state.*true unless"),
        ({"checkpoint.init_from": "hf:"}, "checkpoint.init_from"),
    ]
    for extra, expected in cases:
        with pytest.raises(ConfigError, match=expected) as e:
            train(DEMO, _sgd(tiny_data, run_dir, **extra))
        assert "checkpoint.init_from" in str(e.value) or "load_optimizer_state" in str(e.value)
        assert not run_dir.exists(), extra
    # files that differ from the manifest (same size): refused at launch by their hash, before anything is written
    damaged = tmp_path / "damaged" / "step_00000002"
    shutil.copytree(ckpt, damaged)
    victim = next(damaged.glob("*model_states.pt"))
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(LaunchError) as e:
        train(DEMO, _sgd(tiny_data, run_dir, **{"checkpoint.init_from": str(damaged)}))
    assert e.value.code == 3 and f"cannot initialize from {damaged}" in str(e.value) and victim.name in str(e.value)
    assert not run_dir.exists()
    # an input inside the run's own directory breaks the output rule
    inside = run_dir / "old" / "step_00000002"
    shutil.copytree(ckpt, inside)
    with pytest.raises(ConfigError, match="initial weights"):
        train(DEMO, _sgd(tiny_data, run_dir, **{"checkpoint.init_from": str(inside)}))
    assert sorted(p.name for p in run_dir.iterdir()) == ["old"]
