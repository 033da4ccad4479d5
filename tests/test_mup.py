"""muP (pretrain.model.mup): init, multipliers, LR groups, config loading, and the coordinate check."""

import dataclasses
import math

import pytest
import torch

from pretrain.model import coord_check as cc
from pretrain.model.config import GPTConfig, MuPConfig
from pretrain.model.param_groups import param_groups
from pretrain.model.presets import get_preset
from pretrain.optim import OptimizerConfig

VOCAB = 97
MUP = MuPConfig(base_width=64, sigma_base=0.05, alpha_input=3.0, alpha_output=2.0)


def mup_config(d_model: int = 256, **overrides) -> GPTConfig:
    return dataclasses.replace(get_preset("tiny"), vocab_size=VOCAB, d_model=d_model, mup=MUP, **overrides)


@pytest.fixture
def one_thread():
    """Small CPU matmuls: one thread is fastest, and immune to other processes on the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_multipliers_follow_from_width():
    for d_model, n_heads in ((64, 4), (256, 4), (1024, 8)):
        cfg = mup_config(d_model, n_heads=n_heads)
        m = d_model / 64
        emb, logit, attn = cfg.multipliers()
        assert emb == 3.0
        assert logit == pytest.approx(2.0 / m)
        assert attn == pytest.approx(1.0 / (d_model // n_heads))
    # standard parameterization: the fields, 1/sqrt(d_head) by default
    sp = dataclasses.replace(get_preset("tiny"), vocab_size=VOCAB)
    assert sp.multipliers() == (1.0, 1.0, pytest.approx(1 / math.sqrt(16)))
    assert dataclasses.replace(sp, emb_mult=2.0, logit_mult=0.5, attn_scale=0.1).multipliers() == (2.0, 0.5, 0.1)


@pytest.mark.parametrize("tie", [False, True])
def test_init_std_per_parameter_kind(tie):
    torch.manual_seed(0)
    cfg = mup_config(1024, n_heads=8, n_layers=2, tie_embeddings=tie, bias=True)
    model = cfg.build()
    m = 1024 / 64
    sigma = MUP.sigma_base
    block = model.blocks[0]
    assert model.tok_emb.weight.std().item() == pytest.approx(sigma, rel=0.03)
    for w in (block.attn.wq.weight, block.attn.wk.weight, block.attn.wv.weight, block.mlp.w1.weight, block.mlp.w3.weight):
        assert w.std().item() == pytest.approx(sigma / math.sqrt(m), rel=0.03)
    for w in (block.attn.wo.weight, block.mlp.w2.weight):
        assert w.std().item() == pytest.approx(sigma / math.sqrt(2 * 2 * m), rel=0.03)
    assert model.lm_head.weight.std().item() == pytest.approx(sigma, rel=0.03)  # the output layer: like embeddings
    assert (block.attn_norm.weight == 1).all() and (block.attn.wq.bias == 0).all()
    # the standard parameterization is untouched
    sp = dataclasses.replace(cfg, mup=None).build()
    assert sp.blocks[0].attn.wq.weight.std().item() == pytest.approx(0.02, rel=0.03)


def test_forward_applies_multipliers():
    torch.manual_seed(0)
    cfg = mup_config(128, n_heads=4)
    model = cfg.build().eval()
    plain = dataclasses.replace(cfg, mup=None, emb_mult=3.0, logit_mult=2.0 / 2, attn_scale=1 / 32).build().eval()
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, VOCAB, (2, 20))
    out = model(idx)
    torch.testing.assert_close(out, plain(idx), rtol=0, atol=0)  # muP == the generic knobs it sets
    # ...and by hand: emb * alpha_in -> blocks -> norm -> lm_head * alpha_out / m
    x = model.tok_emb(idx) * 3.0
    for block in model.blocks:
        x = block(x, model.rope(20, idx.device), None)
    torch.testing.assert_close(out, model.lm_head(model.norm(x)) * (2.0 / 2), rtol=1e-6, atol=1e-6)
    # the attention scale is 1/d_head: compare one attention layer with explicit math
    attn = model.blocks[0].attn
    h = torch.randn(2, 20, 128)
    q = attn.wq(h).view(2, 20, 4, 32)
    k = attn.wk(h).view(2, 20, 4, 32)
    v = attn.wv(h).view(2, 20, 4, 32)
    from pretrain.model.gpt import apply_rope

    cos, sin = model.rope(20, h.device)
    q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / 32  # 1/d_head, not 1/sqrt(d_head)
    scores = scores.masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(2, 20, 128)
    torch.testing.assert_close(attn(h, (cos, sin), None), attn.wo(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_param_groups_lr_mult(tie):
    cfg = mup_config(512, tie_embeddings=tie, bias=True, qk_norm=True)
    model = cfg.build()
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1)}
    m = 512 / 64
    assert groups["decay"]["lr_mult"] == pytest.approx(1 / m)
    hidden = {id(p) for p in groups["decay"]["params"]}
    for name, p in model.named_parameters():
        if p.ndim == 2 and name.startswith("blocks."):
            assert id(p) in hidden, name
    assert groups["no_decay"]["lr_mult"] == 1.0 and groups["embed"]["lr_mult"] == 1.0
    assert ("lm_head" in groups) is (not tie)
    if not tie:
        assert groups["lm_head"]["lr_mult"] == 1.0
    # The trainer's optimizer turns lr_mult into each group's base LR.
    opt = OptimizerConfig(lr=1.6e-2).build(list(groups.values()))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["base_lr"] == pytest.approx(1.6e-2 / m) and by_name["decay"]["lr"] == pytest.approx(1.6e-2 / m)
    assert by_name["embed"]["base_lr"] == pytest.approx(1.6e-2)
    # standard parameterization: every multiplier is 1
    assert all(g["lr_mult"] == 1.0 for g in param_groups(dataclasses.replace(cfg, mup=None).build(), 0.1))


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        (dict(emb_mult=2.0), "emb_mult", "1.0 when mup is set"),
        (dict(logit_mult=0.5), "logit_mult", "1.0 when mup is set"),
        (dict(attn_scale=0.1), "attn_scale", "None when mup is set"),
        (dict(mup=MuPConfig(base_width=0)), "mup.base_width", "> 0"),
        (dict(mup=MuPConfig(sigma_base=-1.0)), "mup.sigma_base", "> 0"),
        (dict(z_loss=-1e-4), "z_loss", ">= 0"),
    ],
)
def test_mup_bad_config_refused(overrides, field, fragment):
    cfg = dataclasses.replace(mup_config(), **overrides)
    assert any(name == field and fragment in expected for name, expected in cfg.validate()), cfg.validate()
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cfg.build()


def test_mup_in_run_yaml_and_saved_config_roundtrip(tmp_path):
    import yaml

    from pretrain.config_loader import ConfigError, from_dict, to_dict
    from pretrain.run_config import run_config_from_dict

    base = {"name": "t", "data": {"path": str(tmp_path)}, "train": {"max_steps": 1, "global_batch_size": 2, "micro_batch_size": 1}}
    cfg = run_config_from_dict({**base, "model": {"preset": "tiny", "mup": {"base_width": 32}}}).model
    assert cfg.mup == MuPConfig(base_width=32) and cfg.d_model == 64
    assert run_config_from_dict({**base, "model": {"preset": "tiny", "mup": {}}}).model.mup == MuPConfig()
    d2z = run_config_from_dict({**base, "model": {"preset": "mup-111m"}}).model
    assert d2z.mup == MuPConfig() and d2z.d_model == 768
    assert run_config_from_dict({**base, "model": {"preset": "mup-111m", "mup": None}}).model.mup is None
    # what the trainer saves in config.yaml loads back to the same config
    text = yaml.safe_dump(to_dict(d2z))
    assert from_dict(GPTConfig, yaml.safe_load(text), "config.yaml") == d2z
    with pytest.raises(ConfigError, match=r"model\.mup\.alpha_input = -1\.0: expected > 0"):
        run_config_from_dict({**base, "model": {"preset": "tiny", "mup": {"alpha_input": -1.0}}})
    with pytest.raises(ConfigError, match=r"model\.mup\.base_wdth = 1: unknown key \(did you mean 'base_width'\?\)"):
        run_config_from_dict({**base, "model": {"preset": "tiny", "mup": {"base_wdth": 1}}})


def test_mup_hidden_update_scales_as_one_over_width():
    """One AdamW step moves hidden weights by ~lr/m and embeddings by ~lr, whatever the width."""
    moves = {}
    for d_model in (64, 256):
        torch.manual_seed(0)
        model = mup_config(d_model).build().train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = OptimizerConfig(lr=1e-3, weight_decay=0.0).build(param_groups(model, 0.0))
        idx = torch.randint(0, VOCAB, (2, 16))
        torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
        opt.step()
        moves[d_model] = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    # Adam's first step moves every touched entry by exactly lr (sign of the gradient) times lr_mult.
    assert moves[64]["blocks.0.attn.wq.weight"] == pytest.approx(1e-3 / 1, rel=1e-3)
    assert moves[256]["blocks.0.attn.wq.weight"] == pytest.approx(1e-3 / 4, rel=1e-3)
    assert moves[256]["tok_emb.weight"] == pytest.approx(1e-3, rel=1e-3)
    assert moves[256]["lm_head.weight"] == pytest.approx(1e-3, rel=1e-3)


# ---- coordinate check --------------------------------------------------------------------------


def test_coord_check_mup_is_flat_and_sp_grows(one_thread, tmp_path):
    """16x width range, 5 AdamW steps at the D2Z base LR: muP activations stay put, SP's blow up."""
    result = cc.coord_check(widths=(64, 256, 1024), steps=5, n_layers=2, n_heads=4, seq_len=32)
    last = "block1"
    mup_logits, mup_block = cc.growth(result, "mup", "logits"), cc.growth(result, "mup", last)
    sp_logits, sp_block = cc.growth(result, "sp", "logits"), cc.growth(result, "sp", last)
    summary = f"muP: logits x{mup_logits:.2f}, {last} x{mup_block:.2f}; SP: logits x{sp_logits:.2f}, {last} x{sp_block:.2f}"
    assert 1 / 3 < mup_logits < 3 and 1 / 3 < mup_block < 3, summary
    # every recorded layer stays within a small factor under muP
    for layer in cc.layer_names(2):
        assert 1 / 4 < cc.growth(result, "mup", layer) < 4, (layer, summary)
    assert sp_block > 30 and sp_logits > 3 and sp_logits > 4 * mup_logits, summary
    png = cc.plot(result, tmp_path / "cc.png")
    assert png.stat().st_size > 10_000


def test_coord_check_cli(one_thread, tmp_path):
    assert cc.main(["--out", str(tmp_path), "--widths", "32,64", "--steps", "1", "--layers", "1", "--seq-len", "8",
                    "--parameterization", "mup", "--base-width", "32"]) == 0
    import json

    data = json.loads((tmp_path / "coord_check.json").read_text())
    assert set(data["results"]) == {"mup"} and data["widths"] == [32, 64]
    assert len(data["results"]["mup"]["64"]["logits"]) == 2  # steps 0 and 1
    assert (tmp_path / "coord_check.png").stat().st_size > 5_000
