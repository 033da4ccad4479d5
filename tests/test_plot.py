"""The loss plot's smoothing: a bias-corrected EMA (no lag from starting at the first loss)."""

import json

from pretrain.plot import _ema, plot_run


def test_ema_is_bias_corrected():
    assert all(abs(v - 3.0) < 1e-12 for v in _ema([3.0] * 5))
    # a falling curve: step 2's average weighs steps 1 and 2 by 0.1/0.19 and 0.09/0.19... exactly Adam's m_t/(1-b^t)
    beta = 0.9
    got = _ema([5.0, 4.0], beta)
    assert abs(got[1] - (beta * (1 - beta) * 5.0 + (1 - beta) * 4.0) / (1 - beta**2)) < 1e-12
    # an uncorrected EMA seeded with the first value would give 4.9 here: the corrected one is nearer the curve
    assert got[1] < 4.9


def test_plot_skips_null_values(tmp_path):
    records = [{"step": 0, "tokens": 0, "val_loss": 6.0},
               {"step": 1, "tokens": 8, "loss": 5.0, "lr": 1e-3},
               {"step": 2, "tokens": 16, "loss": None, "lr": 1e-3, "nonfinite": ["loss"]},
               {"step": 3, "tokens": 24, "loss": 4.0, "lr": 1e-3, "val_loss": None}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_run(tmp_path)
    assert out.is_file() and out.stat().st_size > 0
