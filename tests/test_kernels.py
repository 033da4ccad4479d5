"""The model's hot path (issue #24) against the formulations it replaced, kept here as references.

Each kernel is compared with the old math: bitwise in fp32 where the operations are the same,
within a stated tolerance where only the rounding order differs (bf16, gradient reductions).
CPU, tiny sizes; compile checks use the ``aot_eager`` backend (same graphs, no C++ build).
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pretrain.model import gpt as gpt_module
from pretrain.model.loss import lm_loss
from pretrain.model.param_groups import param_groups
from pretrain.model.presets import get_preset

VOCAB = 97


def cfg(**overrides):
    return dataclasses.replace(get_preset("tiny"), **{"vocab_size": VOCAB, **overrides})


def build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cfg(**overrides).build()


# ---- the old formulations (before issue #24) ----------------------------------------------------


def old_rms_norm(x, weight, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


def old_rope_tables(seq_len, head_dim, base):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def old_apply_rope(x, cos, sin):
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def old_attention_forward(self, x, rope, attn_bias):
    """Attention.forward before #24: old RoPE tables and math, GQA by repeat_interleave."""
    B, T, _ = x.shape
    q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
    k = self.wk(x).view(B, T, self.n_kv, self.head_dim)
    v = self.wv(x).view(B, T, self.n_kv, self.head_dim)
    if self.q_norm is not None:
        q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
        cos, sin = old_rope_tables(T, self.head_dim, self.rope_base)
        q, k = old_apply_rope(q, cos, sin), old_apply_rope(k, cos, sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if self.n_kv != self.n_heads:
        k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, is_causal=attn_bias is None,
                                       dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
    y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
    return self.resid_dropout(self.wo(y))


def old_lm_loss(logits, targets, z_loss=0.0):
    logits = logits.float().reshape(-1, logits.size(-1))
    targets = targets.reshape(-1)
    ce = F.cross_entropy(logits, targets, ignore_index=-100)
    if z_loss == 0.0:
        return ce, {"ce": ce.detach(), "z_loss": torch.zeros_like(ce).detach()}
    keep = targets != -100
    z = torch.logsumexp(logits[keep], dim=-1)
    z_term = z_loss * z.pow(2).mean()
    return ce + z_term, {"ce": ce.detach(), "z_loss": z_term.detach()}


@pytest.fixture
def old_model_code(monkeypatch):
    """``switch(model)``: from then on, every GPT in this test runs the old RMSNorm and attention (RoPE, GQA) code."""

    def switch(model):
        monkeypatch.setattr(gpt_module.RMSNorm, "forward", lambda self, x: old_rms_norm(x, self.weight, self.eps))
        monkeypatch.setattr(gpt_module.Attention, "forward", old_attention_forward)
        for block in model.blocks:
            block.attn.rope_base = model.config.rope_base
        return model

    return switch


# ---- RMSNorm --------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                              (torch.bfloat16, torch.float32)])  # the last: autocast's mix
@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 7, 4, 16), (2, 33, 256)])
def test_rms_norm_bitwise_equal_to_old_math(shape, x_dtype, w_dtype):
    torch.manual_seed(0)
    norm = gpt_module.RMSNorm(shape[-1], eps=1e-5).to(w_dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1]))
    x = (torch.randn(shape) * 3).to(x_dtype)
    out = norm(x)
    assert out.dtype == x_dtype
    assert torch.equal(out, old_rms_norm(x, norm.weight, norm.eps))
    # gradients: same math, fused backward (its own reduction order)
    xa, xb = x.float().requires_grad_(True), x.float().requires_grad_(True)
    g = torch.randn(shape)
    norm.float()
    (norm(xa) * g).sum().backward()
    w_grad = norm.weight.grad.clone()
    norm.weight.grad = None
    (old_rms_norm(xb, norm.weight, norm.eps) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_grad, norm.weight.grad, rtol=1e-5, atol=1e-5)


# ---- RoPE -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_bitwise_equal_to_rotate_half(dtype):
    T, Dh, base = 50, 16, 500.0
    cos, signed_sin = gpt_module.rope_tables(T, Dh, base, torch.device("cpu"))
    old_cos, old_sin = old_rope_tables(T, Dh, base)
    assert torch.equal(cos, old_cos) and cos.dtype == signed_sin.dtype == torch.float32
    assert torch.equal(signed_sin[:, Dh // 2:], old_sin[:, Dh // 2:]) and torch.equal(signed_sin[:, :Dh // 2], -old_sin[:, :Dh // 2])
    x = (torch.randn(2, T, 3, Dh) * 2).to(dtype)
    new = gpt_module.apply_rope(x, cos, signed_sin)
    assert new.dtype == dtype
    assert torch.equal(new, old_apply_rope(x, old_cos, old_sin))
    # backward (roll's gradient is a roll back): the same products, so the same gradient
    xa, xb = x.float().requires_grad_(True), x.float().requires_grad_(True)
    g = torch.randn(x.shape)
    (gpt_module.apply_rope(xa, cos, signed_sin) * g).sum().backward()
    (old_apply_rope(xb, old_cos, old_sin) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-6)


# ---- GQA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["rope", "alibi"])
@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_enable_gqa_equals_repeat_interleave(pos, n_kv_heads, monkeypatch):
    model = build(pos=pos, n_kv_heads=n_kv_heads, qk_norm=True)
    attn = model.blocks[0].attn
    attn.rope_base = model.config.rope_base
    x = torch.randn(2, 24, model.config.d_model)
    rope = model.rope(24, x.device) if pos == "rope" else None
    bias = model.alibi(24, x.device, x.dtype) if pos == "alibi" else None
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    new = attn(xa, rope, bias)
    new.square().sum().backward()
    grads = [p.grad.clone() for p in attn.parameters()]
    attn.zero_grad()
    old = old_attention_forward(attn, xb, rope, bias)
    old.square().sum().backward()
    assert torch.equal(new, old)  # forward: the same kernel reads kv head h // (H/K)
    # backward: the kv gradient sums the group's heads inside SDPA instead of in repeat_interleave's backward
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, attn.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


# ---- loss -----------------------------------------------------------------------------------


def loss_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 11, VOCAB, generator=g) * 4).to(dtype)
    targets = torch.randint(0, VOCAB, (3, 11), generator=g)
    targets[0, :4] = -100  # ignored positions
    targets[2, -1] = -100
    return logits, targets


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_lm_loss_equals_old_formulation(dtype, z_loss, chunk_rows):
    logits, targets = loss_inputs(dtype)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss, parts = lm_loss(a, targets, z_loss, chunk_rows=chunk_rows)
    ref, ref_parts = old_lm_loss(b, targets, z_loss)
    loss.backward()
    ref.backward()
    assert loss.dtype == parts["ce"].dtype == parts["z_loss"].dtype == torch.float32 and a.grad.dtype == dtype
    assert (parts["z_loss"] > 0) == (z_loss > 0)
    if dtype == torch.float32:  # the same F.cross_entropy; the z-loss masked instead of indexed
        assert torch.equal(loss, ref) and torch.equal(parts["ce"], ref_parts["ce"])
        assert torch.equal(parts["z_loss"], ref_parts["z_loss"]) and torch.equal(a.grad, b.grad)
    else:  # fp32 arithmetic on the same bf16 values, chunked: fp32 rounding order only
        for x, y in ((loss, ref), (parts["ce"], ref_parts["ce"]), (parts["z_loss"], ref_parts["z_loss"])):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        # gradients: the same fp32 values up to rounding order, then one bf16 rounding (<= 1 ulp apart)
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=2**-8, atol=1e-9)
    ignored = (targets == -100)
    assert (a.grad[ignored] == 0).all() and (a.grad[~ignored] != 0).any()


def test_lm_loss_chunking_is_exact():
    """Chunks change nothing: each row's fp32 logsumexp and softmax are computed whole."""
    logits, targets = loss_inputs(torch.bfloat16, seed=3)
    results = []
    for rows in (1, 5, 33, None):
        x = logits.clone().requires_grad_(True)
        loss, parts = lm_loss(x, targets, 1e-3, chunk_rows=rows)
        loss.backward()
        results.append((loss, x.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
    with pytest.raises(ValueError, match="chunk_rows"):
        lm_loss(logits, targets, chunk_rows=0)


class _Fp32Sizes(TorchDispatchMode):
    """Records the element count of every fp32 tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.sizes.append(t.numel())
        return out


def test_lm_loss_makes_no_full_fp32_copy_of_bf16_logits():
    logits, targets = loss_inputs(torch.bfloat16)
    N = logits.shape[0] * logits.shape[1]
    for fn, bound in ((lambda x: lm_loss(x, targets, 1e-3, chunk_rows=4)[0], 4 * VOCAB),
                      (lambda x: old_lm_loss(x, targets, 1e-3)[0], N * VOCAB)):
        x = logits.clone().requires_grad_(True)
        with _Fp32Sizes() as seen:
            fn(x).backward()
        assert max(seen.sizes) == bound  # ours: one chunk at a time; the old formulation: all N rows


def test_lm_loss_has_no_data_dependent_shapes():
    """Traced with fake tensors (no values): boolean indexing (a host sync on GPU) would not trace."""
    from torch._subclasses.fake_tensor import DynamicOutputShapeException
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    for dtype in (torch.float32, torch.bfloat16):
        logits, targets = loss_inputs(dtype)
        graph = make_fx(lambda x, t: lm_loss(x, t, 1e-3)[0], tracing_mode="fake")(logits, targets)
        assert "nonzero" not in str(graph.code) and "index" not in str(graph.code).replace("ignore_index", "")
    with pytest.raises((DynamicOutputShapeException, GuardOnDataDependentSymNode)):  # the check can fail: the old z-loss does not trace
        make_fx(lambda x, t: old_lm_loss(x, t, 1e-3)[0], tracing_mode="fake")(*loss_inputs(torch.float32))


# ---- ALiBi through FlexAttention ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # CPU: eager reference is all there is
@pytest.mark.parametrize("n_kv_heads", [None, 2])
@pytest.mark.parametrize("mup", [False, True])
def test_alibi_flex_matches_dense_bias(n_kv_heads, mup):
    """FlexAttention (forward only on CPU: it has no CPU backward) vs the dense [1, H, T, T] bias."""
    from pretrain.model.config import MuPConfig

    model = build(pos="alibi", n_kv_heads=n_kv_heads, n_heads=8, mup=MuPConfig(base_width=32) if mup else None).eval()
    idx = torch.randint(0, VOCAB, (2, 40))
    assert not model.use_flex(idx.device)  # auto on CPU: the dense bias
    with torch.no_grad():
        dense = model(idx)
        model.alibi_impl = "flex"
        assert model.use_flex(idx.device)
        flex = model(idx)
    assert isinstance(model.flex_alibi(40, idx.device), gpt_module.FlexAlibi)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
    assert (dense - flex).abs().max() < 1e-3 * dense.abs().max()


def test_alibi_impl_selection():
    model = build(pos="alibi", dropout=0.1).train()
    assert not model.use_flex(torch.device("cpu"))
    if gpt_module.flex_attention is not None:
        assert gpt_module.flex_available(torch.device("cuda")) and not gpt_module.flex_available(torch.device("cpu"))
    model.alibi_impl = "flex"
    with pytest.raises(ValueError, match="dropout"):
        model.use_flex(torch.device("cpu"))
    model.alibi_impl = "fast"
    with pytest.raises(ValueError, match="'auto', 'flex' or 'dense'.*'fast'"):
        model(torch.zeros(1, 4, dtype=torch.long))


# ---- per-block compile ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(pos="rope", n_kv_heads=2, qk_norm=True),
                                       dict(pos="alibi", activation_checkpointing=True)])
def test_compile_is_per_block_one_graph(overrides):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = build(n_layers=3, **overrides).train()
    compiled = build(n_layers=3, **overrides).train()
    compiled.compile(backend="aot_eager")  # as build_engine calls it, with a cheap backend
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load either way
    assert compiled._compiled_call_impl is None  # GPT.forward stays eager...
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)  # ...each block is compiled
    idx = torch.randint(0, VOCAB, (2, 24))
    for model in (eager, compiled):
        lm_loss(model(idx), idx.roll(-1, 1), 1e-4)[0].backward()
    assert counters["stats"]["unique_graphs"] == 1  # the 3 identical blocks share one graph (fullgraph=True)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    torch._dynamo.reset()


# ---- a few training steps, before and after -----------------------------------------------------


def train_losses(model, z_loss, loss_fn, steps=3):
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (2, 33), generator=g)
        targets = tokens[:, 1:].clone()
        targets[0, :5] = -100
        loss, parts = loss_fn(model(tokens[:, :-1]), targets, z_loss)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out.append((loss.item(), parts["ce"].item(), parts["z_loss"].item(), norm.item()))
    return out


@pytest.mark.parametrize("overrides, bitwise", [
    (dict(), True),  # the demo architecture (MHA, RoPE, RMSNorm, SwiGLU): the same kernels' math throughout
    (dict(n_kv_heads=2, qk_norm=True, z_loss=1e-3), False),  # GQA: the kv-gradient sum is ordered differently
    (dict(pos="alibi", norm="layernorm", n_kv_heads=1, z_loss=1e-4), False),
])
def test_training_steps_match_old_code(overrides, bitwise, old_model_code):
    c = dataclasses.replace(get_preset("demo"), vocab_size=VOCAB, max_seq_len=32, **overrides)
    torch.manual_seed(1234)
    new = train_losses(c.build().train(), c.z_loss, lm_loss)
    torch.manual_seed(1234)
    old = train_losses(old_model_code(c.build().train()), c.z_loss, old_lm_loss)
    assert new[0][1] == old[0][1]  # the first forward's cross-entropy is bitwise the same either way
    assert new[0][2] == pytest.approx(old[0][2], rel=1e-6, abs=0)  # z-loss: a masked sum over N, not a mean over kept
    if bitwise:
        assert new == old
    else:
        diff = max(abs(a - b) for rn, ro in zip(new, old, strict=True) for a, b in zip(rn, ro, strict=True))
        assert diff < 1e-4, (new, old)
    assert all(math.isfinite(x) for row in new for x in row)
