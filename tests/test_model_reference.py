"""Numerical parity with the reference implementation: Hugging Face transformers'
``LlamaForCausalLM`` and ``Phi3ForCausalLM`` built from the same small random config
(no download), our weights mapped in by ``pretrain.export.to_hf_state_dict``."""

import dataclasses

import pytest
import torch

from pretrain.export import hf_config, to_hf_state_dict, unsupported
from pretrain.model.config import GPTConfig, MuPConfig
from pretrain.model.presets import get_preset

transformers = pytest.importorskip("transformers")

VOCAB = 97
BASE = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64, rope_base=500.0, norm_eps=1e-6)
VARIANTS = {
    "mha": dict(),
    "gqa-tied": dict(n_kv_heads=2, tie_embeddings=True),
    "mqa-bias": dict(n_kv_heads=1, bias=True),
}


def hf_model(cfg: GPTConfig, fmt: str, attn: str):
    d = hf_config(cfg, fmt, bos_id=1, eos_id=2)
    for key in ("architectures", "model_type", "torch_dtype"):
        d.pop(key)
    config_cls = transformers.LlamaConfig if fmt == "llama" else transformers.Phi3Config
    model_cls = transformers.LlamaForCausalLM if fmt == "llama" else transformers.Phi3ForCausalLM
    config = config_cls(**d)
    config._attn_implementation = attn
    return model_cls(config).float().eval()


def random_ours(cfg: GPTConfig):
    torch.manual_seed(0)
    model = cfg.build().eval()
    with torch.no_grad():  # make norm gains and biases non-trivial too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("fmt, variant", [(f, v) for f in ("llama", "phi3") for v in sorted(VARIANTS)
                                          if not (f == "phi3" and "bias" in v)])  # Phi-3 has no biases
def test_logits_match_transformers(fmt, variant, attn):
    cfg = GPTConfig(**BASE, **VARIANTS[variant])
    assert unsupported(cfg, fmt) == []
    ours = random_ours(cfg)
    ref = hf_model(cfg, fmt, attn)
    missing, unexpected = ref.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg, fmt), strict=False)
    assert not unexpected
    assert missing == (["lm_head.weight"] if cfg.tie_embeddings else [])  # tied: lm_head is embed_tokens
    if cfg.tie_embeddings:
        assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
    idx = torch.randint(0, VOCAB, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(idx), ref(idx).logits
    assert a.abs().max() > 1.0  # not trivially small
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_phi3_fused_projection_layout():
    cfg = GPTConfig(**BASE, n_kv_heads=2)
    sd = random_ours(cfg).state_dict()
    hf = to_hf_state_dict(sd, cfg, "phi3")
    qkv = hf["model.layers.1.self_attn.qkv_proj.weight"]
    assert qkv.shape == (64 + 2 * 32, 64)  # q: H*Dh rows, then k and v: K*Dh rows each
    assert torch.equal(qkv[:64], sd["blocks.1.attn.wq.weight"]) and torch.equal(qkv[96:], sd["blocks.1.attn.wv.weight"])
    gate_up = hf["model.layers.1.mlp.gate_up_proj.weight"]
    assert torch.equal(gate_up[:96], sd["blocks.1.mlp.w1.weight"])  # gate (SiLU'd) first, then up
    assert torch.equal(gate_up[96:], sd["blocks.1.mlp.w3.weight"])


def test_phi3_mini_preset_config_is_transformers_phi3_mini():
    """Our phi3-mini preset gives the shapes of transformers' Phi-3-mini defaults (no weights)."""
    cfg = get_preset("phi3-mini")
    assert unsupported(cfg, "phi3") == [] and unsupported(cfg, "llama") == []
    ref = transformers.Phi3Config()  # the library's defaults are Phi-3-mini-4k's
    ours = hf_config(cfg, "phi3")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                "partial_rotary_factor", "hidden_act"):
        assert ours[key] == getattr(ref, key), key
    with torch.device("meta"):
        ref_model = transformers.Phi3ForCausalLM(ref)
    assert sum(p.numel() for p in ref_model.parameters()) == cfg.num_params()


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(pos="alibi"), "ALiBi"),
        (dict(norm="layernorm"), "RMSNorm"),
        (dict(mlp="gelu"), "SwiGLU"),
        (dict(qk_norm=True), "QK-norm"),
    ],  # muP and the forward multipliers are exportable: they are folded into the weights (tests/test_export.py)
)
@pytest.mark.parametrize("fmt", ["llama", "phi3"])
def test_unrepresentable_architectures_refused(fmt, overrides, fragment):
    cfg = dataclasses.replace(GPTConfig(**BASE), **overrides)
    reasons = unsupported(cfg, fmt)
    assert len(reasons) == 1 and fragment in reasons[0], reasons
    assert unsupported(GPTConfig(**BASE), fmt) == []
    assert any("bias" in r for r in unsupported(GPTConfig(**BASE, bias=True), "phi3"))
    assert unsupported(get_preset("mup-111m"), fmt)  # the D2Z models (ALiBi, LayerNorm) are not exportable
    for folded in (dict(mup=MuPConfig()), dict(emb_mult=2.0), dict(logit_mult=0.5), dict(attn_scale=0.01)):
        assert unsupported(dataclasses.replace(GPTConfig(**BASE), **folded), fmt) == []
