"""``python -m pretrain.export``: a real tiny training run (two ranks, DeepSpeed ZeRO-2: the fp32
weights are partitioned over the ranks' checkpoint files), exported to Hugging Face Llama / Phi-3
and loaded back with ``from_pretrained``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.export import ExportError, export, load_gpt
from tests.conftest import ROOT, run_cli, run_ranks, tiny_overrides

transformers = pytest.importorskip("transformers")

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """`pretrain.py` on two ranks, tiny GQA model, complete checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    overrides = tiny_overrides(tiny_data, run_dir, **{
        "train.max_steps": 4, "train.global_batch_size": 4, "checkpoint.interval": 2, "eval.interval": 0,
        "eval.max_samples": 4, "logging.tensorboard": False, "model.n_kv_heads": 2,
    })
    res = run_ranks(["--config", DEMO, *overrides], 2)
    assert res.returncode == 0, f"STDOUT:\n{res.stdout[-3000:]}\nSTDERR:\n{res.stderr[-5000:]}"
    tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    assert tags == ["step_00000002", "step_00000004"]
    assert len(list((run_dir / "checkpoints" / "step_00000004").glob("*optim_states.pt"))) == 2  # one per rank
    return run_dir


def logits_of(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return getattr(out, "logits", out)


def test_export_llama_cli_loads_in_transformers(trained_run, tmp_path):
    out = tmp_path / "llama"
    res = run_cli([sys.executable, "-m", "pretrain.export", "--run-dir", str(trained_run), "--out", str(out)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "step_00000004" in res.stdout  # the newest complete checkpoint by default
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    assert (config["vocab_size"], config["eos_token_id"]) == (512, 2)

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    ours, tag, _ = load_gpt(trained_run)
    assert tag == "step_00000004"
    idx = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits_of(hf, idx), logits_of(ours, idx), rtol=0, atol=1e-5)
    # the checkpoint holds trained weights, not the initialization
    torch.manual_seed(1234)  # train.seed of demo_cpu.yaml
    init = ours.config.build()
    assert not torch.allclose(init.blocks[0].attn.wq.weight, ours.blocks[0].attn.wq.weight)

    # The tokenizer the run used comes along and encodes exactly like sentencepiece (slow and fast).
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    text = "def f(x):\n    return  x + 1  # héllo wörld ½"
    for use_fast in (False, True):
        tok = transformers.AutoTokenizer.from_pretrained(out, use_fast=use_fast)
        assert tok.encode(text) == sp.encode(text), use_fast
        assert tok.decode(sp.encode(text)) == text


def test_export_phi3_older_tag_bf16(trained_run, tmp_path):
    out = export(trained_run, tmp_path / "phi3", tag="step_00000002", fmt="phi3", log=lambda *a: None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "Phi3ForCausalLM"
    ours, tag, _ = load_gpt(trained_run, tag="step_00000002")
    newest, _, _ = load_gpt(trained_run)
    idx = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits_of(hf, idx), logits_of(ours, idx), rtol=0, atol=1e-5)
    assert not torch.allclose(logits_of(newest, idx), logits_of(ours, idx))  # a different checkpoint

    from safetensors.torch import load_file

    bf16 = export(trained_run, tmp_path / "bf16", fmt="llama", dtype="bfloat16", log=lambda *a: None)
    tensors = load_file(str(bf16 / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((bf16 / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_export_refusals(trained_run, tmp_path):
    quiet = dict(log=lambda *a: None)
    # an incomplete checkpoint (no COMPLETE marker) and a missing one are refused, naming the complete ones
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "step_00000004" / "COMPLETE").unlink()
    with pytest.raises(ExportError, match=r"step_00000004 is incomplete.*complete checkpoints: step_00000002"):
        export(run, tmp_path / "a", tag="step_00000004", **quiet)
    with pytest.raises(ExportError, match="step_00000007 does not exist"):
        export(run, tmp_path / "a", tag="step_00000007", **quiet)
    # the default skips the incomplete newest checkpoint
    _, tag, _ = load_gpt(run)
    assert tag == "step_00000002"
    # a file that differs from the marker's hash is refused
    victim = next((run / "checkpoints" / "step_00000002").glob("*model_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="files differ from its manifest"):
        export(run, tmp_path / "c", **quiet)
    # an existing output directory is replaced only with overwrite=True, and only when it is an earlier export
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="does not look like this command's output"):
            export(trained_run, tmp_path / "taken", overwrite=overwrite, **quiet)
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["x"]
    export(trained_run, tmp_path / "done", **quiet)
    with pytest.raises(ExportError, match="already exists"):
        export(trained_run, tmp_path / "done", **quiet)
    export(trained_run, tmp_path / "done", overwrite=True, **quiet)
    assert (tmp_path / "done" / "model.safetensors").is_file()
    # architectures transformers' Llama / Phi-3 cannot represent are refused before any work
    for key, value, fragment in (("pos", "alibi", "ALiBi"), ("norm", "layernorm", "RMSNorm")):
        other = tmp_path / f"run_{key}"
        other.mkdir()
        cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
        cfg["model"][key] = value
        (other / "config.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ExportError, match=fragment):
            export(other, tmp_path / "d", **quiet)
    # a directory that is not a run
    with pytest.raises(ExportError, match="config.yaml not found"):
        export(tmp_path / "nowhere", tmp_path / "e", **quiet)


def test_export_cli_error_exit_code(tmp_path):
    res = run_cli([sys.executable, "-m", "pretrain.export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "config.yaml not found" in res.stderr


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fmt", ["llama", "phi3"])
def test_export_folds_mup_multipliers(tmp_path, tied, fmt):
    """A muP model (embedding x alpha_input, logits x alpha_output/m, attention 1/d_head) exports with its
    multipliers folded into the weights: transformers gives our logits; a tied model is written untied."""
    from safetensors.torch import save_file

    from pretrain.hf import hf_config, to_hf_state_dict, unsupported
    from pretrain.model.config import GPTConfig, MuPConfig

    config = GPTConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                       tie_embeddings=tied, mup=MuPConfig(base_width=32))
    assert unsupported(config, fmt) == []
    torch.manual_seed(0)
    ours = config.build().eval()
    emb_mult, logit_mult, attn_scale = config.multipliers()
    assert emb_mult != 1.0 and logit_mult != 1.0 and attn_scale == 1 / 16  # 1/head_dim
    tensors = {k: v.detach().contiguous() for k, v in to_hf_state_dict(ours.state_dict(), config, fmt).items()}
    assert "lm_head.weight" in tensors  # untied in the export even when ours is tied
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg = hf_config(config, fmt)
    assert cfg["tie_word_embeddings"] is False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits_of(hf, idx), logits_of(ours, idx), rtol=0, atol=1e-4)
