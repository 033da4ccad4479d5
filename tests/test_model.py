"""Tests for pretrain.model: real torch, tiny sizes, CPU."""

import dataclasses
import math
import typing

import pytest
import torch
import torch.nn.functional as F

from pretrain.model import gpt as gpt_module
from pretrain.model.config import GPTConfig, MuPConfig
from pretrain.model.gpt import GPT
from pretrain.model.param_groups import param_groups
from pretrain.model.presets import PRESETS, get_preset, register_preset

VOCAB = 97


def tiny(**overrides) -> GPTConfig:
    return dataclasses.replace(get_preset("tiny"), **{"vocab_size": VOCAB, **overrides})


def build(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return tiny(**overrides).build().eval()


# ---- config --------------------------------------------------------------------------------


def test_config_type_hints_are_simple_and_resolvable():
    hints = typing.get_type_hints(GPTConfig)
    simple = {int, float, bool, str, int | None, float | None}
    for f in dataclasses.fields(GPTConfig):
        hint = hints[f.name]
        if f.name == "mup":  # the one nested section: Optional[MuPConfig] of simple fields
            assert hint == MuPConfig | None
            assert all(h in simple for h in typing.get_type_hints(MuPConfig).values())
            continue
        assert hint in simple or typing.get_origin(hint) is typing.Literal, (f.name, hint)
    assert typing.get_args(hints["norm"]) == ("rmsnorm", "layernorm")


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        (dict(n_heads=3), "n_heads", "divisor of d_model=64"),
        (dict(d_model=0), "d_model", "> 0"),
        (dict(n_layers=-1), "n_layers", "> 0"),
        (dict(n_kv_heads=3), "n_kv_heads", "divisor of n_heads=4"),
        (dict(dropout=1.0), "dropout", "[0, 1)"),
        (dict(d_model=36, n_heads=4), "n_heads", "even"),  # head_dim 9 with rope
        (dict(norm="batchnorm"), "norm", "'rmsnorm'"),
        (dict(vocab_size=0), "vocab_size", "> 0"),
    ],
)
def test_validate_names_bad_field(overrides, field, fragment):
    problems = tiny(**overrides).validate()
    assert any(name == field and fragment in expected for name, expected in problems), problems
    with pytest.raises(ValueError, match=field):
        tiny(**overrides).build()


def test_validate_accepts_good_configs_and_odd_head_dim_with_alibi():
    assert tiny().validate() == []
    assert GPTConfig().validate() == []  # vocab_size=None is resolved later
    assert tiny(d_model=36, n_heads=4, pos="alibi").validate() == []


def test_build_requires_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig().build()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(tie_embeddings=True),
        dict(n_kv_heads=2),
        dict(n_kv_heads=1, mlp="gelu", bias=True, norm="layernorm"),
        dict(mlp="gelu", tie_embeddings=True, qk_norm=True, pos="alibi"),
        dict(bias=True, qk_norm=True, d_ff=100, n_kv_heads=2),
    ],
)
def test_num_params_matches_built_model(overrides):
    cfg = tiny(**overrides)
    model = cfg.build()
    real = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert cfg.num_params() == real
    embedding = model.tok_emb.weight.numel() + (0 if cfg.tie_embeddings else model.lm_head.weight.numel())
    assert cfg.num_params(include_embeddings=False) == real - embedding
    assert cfg.flops_per_token(128) == 6 * (real - embedding + VOCAB * 64) + 12 * 2 * 64 * 128
    assert cfg.flops_per_token(128, include_lm_head=False) == 6 * (real - embedding) + 12 * 2 * 64 * 128


def test_ffn_dim_defaults():
    assert GPTConfig(d_model=256, mlp="swiglu").ffn_dim == 704  # int(8/3*256)=682 -> 704
    assert GPTConfig(d_model=256, mlp="gelu").ffn_dim == 1024
    assert GPTConfig(d_model=256, d_ff=300).ffn_dim == 300
    assert GPTConfig(n_heads=8).n_kv == 8 and GPTConfig(n_heads=8, n_kv_heads=2).n_kv == 2


def test_presets_registry():
    assert {"tiny", "demo"} <= set(PRESETS)
    a, b = get_preset("demo"), get_preset("demo")
    assert a == b and a is not b  # fresh instance every time
    assert (a.d_model, a.n_layers, a.n_heads, a.max_seq_len) == (128, 4, 4, 256)
    assert get_preset("tiny").validate() == []
    with pytest.raises(KeyError, match="tiny"):
        get_preset("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_preset("tiny")(lambda: GPTConfig())


# ---- forward: shapes, dtypes, causality -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_forward_shapes_and_dtypes(dtype, pos):
    model = build(pos=pos, n_kv_heads=2, qk_norm=True).to(dtype)
    idx = torch.randint(0, VOCAB, (2, 17))
    logits = model(idx)
    assert logits.shape == (2, 17, VOCAB) and logits.dtype == dtype
    assert torch.isfinite(logits).all()
    model.train()
    logits = model(idx)
    F.cross_entropy(logits.float().flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in model.parameters())


def test_bf16_close_to_fp32():
    model = build(pos="rope")
    idx = torch.randint(0, VOCAB, (2, 64))
    ref = model(idx)
    out = model.to(torch.bfloat16)(idx).float()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_sequence_longer_than_max_seq_len_raises():
    model = build(max_seq_len=16)
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_causal_no_future_leak(pos):
    model = build(pos=pos, n_kv_heads=2)
    T, t = 32, 13
    idx = torch.randint(0, VOCAB, (2, T))
    base = model(idx)

    future = idx.clone()
    future[:, t + 1:] = torch.randint(0, VOCAB, (2, T - t - 1))
    out = model(future)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)

    # ...while changing position t does change positions >= t (the test can fail).
    present = idx.clone()
    present[:, t] = (present[:, t] + 1) % VOCAB
    out = model(present)
    torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-5)
    assert (out[:, t:] - base[:, t:]).abs().amax(dim=-1).min() > 1e-4


# ---- attention vs a naive reference -----------------------------------------------------------


def naive_rope(x, base):  # x [B, T, H, Dh], rotate-half pairing (i, i + Dh/2)
    B, T, H, Dh = x.shape
    half = Dh // 2
    freqs = torch.tensor([base ** (-2 * i / Dh) for i in range(half)], dtype=torch.float64)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None]  # [T, half]
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angle), angle)[:, None]
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def naive_slopes(n):  # Press et al.: 2^(-8i/n) for power-of-2 n
    return [2 ** (-8 * (i + 1) / n) for i in range(n)]


def naive_attention(attn, x, cfg):
    B, T, D = x.shape
    H, K, Dh = cfg.n_heads, cfg.n_kv, cfg.head_dim
    q = attn.wq(x).view(B, T, H, Dh)
    k = attn.wk(x).view(B, T, K, Dh)
    v = attn.wv(x).view(B, T, K, Dh)
    if cfg.pos == "rope":
        q, k = naive_rope(q, cfg.rope_base), naive_rope(k, cfg.rope_base)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k = torch.stack([k[:, h * K // H] for h in range(H)], dim=1)  # GQA: head h -> kv head h // (H/K)
    v = torch.stack([v[:, h * K // H] for h in range(H)], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)  # [B, H, T, T]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = torch.zeros(T, T).masked_fill(j > i, float("-inf"))
    if cfg.pos == "alibi":
        slopes = torch.tensor(naive_slopes(H))
        mask = mask + slopes[:, None, None] * (j - i).clamp(max=0)
    y = torch.softmax(scores + mask, dim=-1) @ v
    return attn.wo(y.transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("pos", ["rope", "alibi"])
@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_attention_matches_naive(pos, n_kv_heads):
    cfg = tiny(pos=pos, n_kv_heads=n_kv_heads)
    model = build(pos=pos, n_kv_heads=n_kv_heads)
    attn = model.blocks[0].attn
    x = torch.randn(2, 40, cfg.d_model)
    rope = model.rope(40, x.device) if pos == "rope" else None
    bias = model.alibi(40, x.device, x.dtype) if pos == "alibi" else None
    torch.testing.assert_close(attn(x, rope, bias), naive_attention(attn, x, cfg), rtol=1e-4, atol=1e-5)


def test_alibi_slopes():
    assert gpt_module.alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    assert gpt_module.alibi_slopes(4) == pytest.approx(naive_slopes(4))
    # non-power-of-2: the 4 slopes of n=4, then every other slope of n=8
    assert gpt_module.alibi_slopes(6) == pytest.approx(naive_slopes(4) + naive_slopes(8)[0::2][:2])
    assert len(gpt_module.alibi_slopes(12)) == 12


def test_rope_is_relative():
    # <rope(q, m), rope(k, n)> depends only on m - n.
    Dh = 16
    cos, sin = gpt_module.rope_tables(64, Dh, 10000.0, torch.device("cpu"))
    q, k = torch.randn(Dh), torch.randn(Dh)

    def dot(m, n):
        rq = gpt_module.apply_rope(q.expand(1, 64, 1, Dh), cos, sin)[0, m, 0]
        rk = gpt_module.apply_rope(k.expand(1, 64, 1, Dh), cos, sin)[0, n, 0]
        return (rq * rk).sum()

    torch.testing.assert_close(dot(10, 3), dot(57, 50), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dot(10, 3), dot(10, 4), atol=1e-3)


def test_rope_stays_fp32_in_bf16_model():
    model = build(pos="rope").to(torch.bfloat16)
    assert not any(b.is_floating_point() for b in model.buffers())  # nothing for DeepSpeed to cast
    model(torch.randint(0, VOCAB, (1, 128)))
    cos, sin = model.rope(128, torch.device("cpu"))
    assert cos.dtype == sin.dtype == torch.float32
    ref_cos, _ = gpt_module.rope_tables(128, model.config.head_dim, model.config.rope_base, torch.device("cpu"))
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    # Applying RoPE to bf16 activations at far positions loses no more than one bf16 rounding.
    x = torch.randn(1, 128, 4, 16)
    exact = gpt_module.apply_rope(x, cos, sin)
    approx = gpt_module.apply_rope(x.bfloat16(), cos, sin)
    assert approx.dtype == torch.bfloat16
    assert ((approx.float() - exact).abs() <= 2 * 2**-8 * exact.abs() + 2 * 2**-8 * x.abs().amax()).all()


# ---- backward / activation checkpointing ----------------------------------------------------


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_activation_checkpointing_same_gradients(pos):
    plain = build(pos=pos).train()
    torch.manual_seed(1)
    ckpt = tiny(pos=pos, activation_checkpointing=True).build().train()
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.randint(0, VOCAB, (2, 24))
    calls = []
    for model in (plain, ckpt):
        mlp, n = model.blocks[0].mlp, len(calls)
        mlp.forward = lambda x, mlp=mlp, fwd=mlp.forward: calls.append(mlp) or fwd(x)  # count calls
        F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
        assert len(calls) - n == (2 if model is ckpt else 1)  # checkpointed blocks are recomputed
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


# ---- init ------------------------------------------------------------------------------------


def test_init_deterministic_and_scaled():
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q), name
        if p.ndim == 2:
            assert not torch.equal(p, r), name
    model = build(n_layers=8, d_model=256, n_heads=4, bias=True)
    std = model.config.init_std
    assert model.blocks[0].attn.wq.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(std, rel=0.05)
    for w in (model.blocks[0].attn.wo.weight, model.blocks[0].mlp.w2.weight):
        assert w.std().item() == pytest.approx(std / 4, rel=0.05)  # 1/sqrt(2*8)
    assert (model.blocks[0].attn_norm.weight == 1).all() and (model.norm.weight == 1).all()
    assert (model.blocks[0].attn.wq.bias == 0).all() and (model.blocks[0].mlp.w2.bias == 0).all()


# ---- param groups ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(), dict(tie_embeddings=True, bias=True, qk_norm=True, norm="layernorm")])
@pytest.mark.parametrize("emb_wd", [False, True])
def test_param_groups_cover_every_parameter_once(overrides, emb_wd):
    model = build(**overrides)
    groups = param_groups(model, weight_decay=0.1, embedding_weight_decay=emb_wd)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(g["params"] and g["lr_mult"] == 1.0 for g in groups)
    by_name = {g["name"]: g for g in groups}
    no_decay = {id(p) for p in by_name["no_decay"]["params"]}
    for name, p in model.named_parameters():
        if p.ndim == 1:  # norm gains and biases
            assert id(p) in no_decay, name
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["decay"]["weight_decay"] == 0.1
    assert [id(p) for p in by_name["embed"]["params"]] == [id(model.tok_emb.weight)]
    assert by_name["embed"]["weight_decay"] == (0.1 if emb_wd else 0.0)
    if model.config.tie_embeddings:
        assert "lm_head" not in by_name
    else:
        assert by_name["lm_head"]["params"][0] is model.lm_head.weight
    torch.optim.AdamW(groups, lr=1e-3)  # accepted by a real optimizer


def test_param_groups_skip_frozen():
    model = build()
    model.tok_emb.weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert "embed" not in {g["name"] for g in groups}


# ---- training works ----------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_overfits_fixed_batch(pos):
    torch.manual_seed(0)
    model = tiny(pos=pos, n_kv_heads=2).build().train()
    data = torch.randint(0, VOCAB, (4, 33))
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.0), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.1)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# ---- presets at full size (meta device: no memory) -----------------------------------------------

# Nominal sizes: the issue / papers (phi3-mini ~3.8B; D2Z Appendix A: 39M proxy, Table 2: 111M,
# 617M, 1.7B) and, for the small presets, their docstrings (non-embedding, vocabulary-free).
NOMINAL_PARAMS = {
    "phi3-mini": 3.8e9,
    "mup-39m-proxy": 39e6,
    "mup-111m": 111e6,
    "mup-617m": 617e6,
    "mup-1.7b": 1.7e9,
}
NOMINAL_NON_EMBEDDING = {"tiny": 0.11e6, "demo": 0.85e6, "cpu-s": 0.056e6}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta_with_nominal_size(name):
    cfg = get_preset(name)
    assert name in NOMINAL_PARAMS or name in NOMINAL_NON_EMBEDDING, f"add preset {name!r} to the nominal sizes"
    if cfg.vocab_size is None:
        cfg = dataclasses.replace(cfg, vocab_size=512)
    with torch.device("meta"):
        model = cfg.build()
    real = sum(p.numel() for p in model.parameters())
    assert real == cfg.num_params()
    assert all(p.is_meta for p in model.parameters())
    if name in NOMINAL_PARAMS:
        assert real == pytest.approx(NOMINAL_PARAMS[name], rel=0.05), f"{name}: {real / 1e6:.1f}M"
    else:
        assert cfg.num_params(include_embeddings=False) == pytest.approx(NOMINAL_NON_EMBEDDING[name], rel=0.05)


def test_published_presets_architecture():
    phi = get_preset("phi3-mini")
    assert (phi.n_layers, phi.d_model, phi.n_heads, phi.n_kv, phi.ffn_dim, phi.vocab_size, phi.max_seq_len) == (
        32, 3072, 32, 32, 8192, 32064, 4096)
    assert (phi.pos, phi.norm, phi.mlp, phi.tie_embeddings, phi.bias, phi.mup) == ("rope", "rmsnorm", "swiglu", False, False, None)
    for name, d_model, n_layers in (("mup-39m-proxy", 256, 24), ("mup-111m", 768, 10), ("mup-617m", 2048, 10),
                                    ("mup-1.7b", 2048, 32)):
        cfg = get_preset(name)
        assert (cfg.d_model, cfg.n_layers, cfg.head_dim, cfg.vocab_size, cfg.max_seq_len) == (d_model, n_layers, 64, 50257, 2048)
        assert (cfg.pos, cfg.mlp, cfg.norm, cfg.tie_embeddings) == ("alibi", "swiglu", "layernorm", True)
        assert cfg.mup == MuPConfig(base_width=256, sigma_base=8.67e-2, alpha_input=9.17, alpha_output=1.095)
        assert cfg.validate() == []


def test_flops_per_token_palm_formula():
    # 6N + 12 L H Q T with N = non-embedding parameters + the lm_head matmul (PaLM appendix B).
    phi = get_preset("phi3-mini")
    n = 32 * (4 * 3072**2 + 3 * 3072 * 8192 + 2 * 3072) + 3072
    assert phi.num_params(include_embeddings=False) == n
    assert phi.flops_per_token(4096) == 6 * (n + 32064 * 3072) + 12 * 32 * 32 * 96 * 4096
    gqa = tiny(n_kv_heads=1, d_model=64, n_heads=8)  # fewer k/v parameters, same attention FLOPs
    assert gqa.flops_per_token(100, include_lm_head=False) == 6 * gqa.num_params(include_embeddings=False) + 12 * 2 * 8 * 8 * 100


# ---- generic multipliers, z-loss ------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_causal_with_mup(pos):
    model = build(pos=pos, mup=MuPConfig(base_width=32))
    idx = torch.randint(0, VOCAB, (2, 24))
    future = idx.clone()
    future[:, 11:] = torch.randint(0, VOCAB, (2, 13))
    torch.testing.assert_close(model(future)[:, :11], model(idx)[:, :11], rtol=0, atol=1e-5)


def test_lm_loss_and_z_loss():
    from pretrain.model.loss import lm_loss

    logits = torch.randn(2, 5, VOCAB) * 3
    targets = torch.randint(0, VOCAB, (2, 5))
    ce_ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss, parts = lm_loss(logits, targets)
    assert loss == ce_ref and parts["ce"] == ce_ref and parts["z_loss"] == 0
    z = torch.logsumexp(logits, dim=-1)
    loss, parts = lm_loss(logits.bfloat16(), targets, z_loss=1e-4)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(parts["z_loss"], 1e-4 * (z**2).mean(), rtol=2e-2, atol=0)
    torch.testing.assert_close(loss, parts["ce"] + parts["z_loss"])
    # ignored targets (-100) are left out of both terms
    masked = targets.clone()
    masked[:, 3:] = -100
    loss, parts = lm_loss(logits, masked, z_loss=1e-3)
    torch.testing.assert_close(parts["ce"], F.cross_entropy(logits[:, :3].flatten(0, 1), targets[:, :3].flatten()))
    torch.testing.assert_close(parts["z_loss"], 1e-3 * (z[:, :3] ** 2).mean())
    # the z-loss gradient pushes logsumexp towards 0
    x = logits.clone().requires_grad_(True)
    lm_loss(x, targets, z_loss=1.0)[0].backward()
    g_z = x.grad.clone()
    x.grad = None
    lm_loss(x, targets)[0].backward()
    assert ((g_z - x.grad).sum(-1) * z.sign() > 0).all()
