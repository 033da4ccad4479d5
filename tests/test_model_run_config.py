"""Model sizes against the run: bad model input is refused before anything is built, with
messages naming the values (pretrain.run_config.resolve and GPTConfig.validate)."""

import pytest

from pretrain.config_loader import ConfigError, Sources
from pretrain.run_config import load_run_config, resolve
from tests.conftest import ROOT, tiny_overrides

DEMO = ROOT / "configs" / "demo_cpu.yaml"


def resolve_error(tiny_data, tmp_path, *extra: str) -> str:
    sources = Sources(str(DEMO))
    with pytest.raises(ConfigError) as info:
        cfg = load_run_config(DEMO, [*tiny_overrides(tiny_data, tmp_path / "run"), *extra], sources)
        resolve(cfg, 2, sources)
    return str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # the vocabulary must hold every token id of the tokenizer (512 pieces)
        (["model.vocab_size=500"], "model.vocab_size = 500: expected at least the tokenizer's vocabulary size 512"),
        # the context must hold the data's sequences (64 tokens)
        (["model.max_seq_len=32"], "data.seq_len = 64: expected at most model.max_seq_len = 32"),
        (["model.n_heads=3"], "model.n_heads = 3: expected a divisor of d_model=64"),
        (["model.n_kv_heads=3"], "model.n_kv_heads = 3: expected a divisor of n_heads=4"),
        (["model.mup={}", "model.emb_mult=2.0"], "model.emb_mult = 2.0: expected 1.0 when mup is set"),
    ],
)
def test_bad_model_input_refused_naming_values(tiny_data, tmp_path, overrides, message):
    assert message in resolve_error(tiny_data, tmp_path, *overrides)


def test_good_sizes_resolve(tiny_data, tmp_path):
    cfg, _ = resolve(load_run_config(DEMO, [*tiny_overrides(tiny_data, tmp_path / "run"), "model.vocab_size=512",
                                            "model.max_seq_len=64", "model.mup={}"]), 2)
    assert (cfg.model.vocab_size, cfg.model.max_seq_len, cfg.seq_len) == (512, 64, 64)
    model = cfg.model.build()  # and it builds
    assert model.lm_head.out_features == 512
