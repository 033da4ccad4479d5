"""The merge weights of the WSM duality (``python -m pretrain.merge --weights decay:SHAPE``): pure and fast.

A merge sum_j c_j theta_j of checkpoints theta_0..theta_k (oldest first) implies the LR multiplier
w_i = sum_{j>=i} c_j for the update chunk ending at checkpoint i; ``decay:SHAPE`` picks c so that w_i = f(i/(k+1))."""

from __future__ import annotations

import math

import pytest

from pretrain.merge import decay_shapes, duality_weights, implied_multipliers, merge_weights, parse_args


@pytest.mark.parametrize("k", [0, 1, 3, 9])
def test_decay_linear_is_a_linear_decay_to_one_over_k_plus_1(k):
    n = k + 1
    c = duality_weights("linear", n)
    assert c == pytest.approx([1 / n] * n, abs=1e-15)  # uniform weights
    w = implied_multipliers(c)
    assert w == pytest.approx([1 - i / n for i in range(n)], abs=1e-12)
    assert w[0] == pytest.approx(1.0) and w[-1] == pytest.approx(1 / n)  # linear down to 1/(k+1)
    assert merge_weights("decay:linear", n) == c


@pytest.mark.parametrize("k", [1, 4, 19])
def test_decay_1_sqrt_weights(k):
    n = k + 1
    c = merge_weights("decay:1-sqrt", n)
    assert len(c) == n and all(x >= 0 for x in c)
    assert sum(c) == pytest.approx(1.0, abs=1e-12)
    assert implied_multipliers(c) == pytest.approx([1 - math.sqrt(i / n) for i in range(n)], abs=1e-12)
    assert c[0] == pytest.approx(math.sqrt(1 / n)) and c[-1] == pytest.approx(1 - math.sqrt(k / n))
    assert c != pytest.approx(merge_weights("decay:linear", n))


def test_every_cooldown_shape_is_a_merge_weight():
    assert set(decay_shapes()) >= {"linear", "cosine", "1-sqrt"}
    for shape in decay_shapes():
        c = merge_weights(f"decay:{shape}", 5)
        assert all(x >= 0 for x in c) and sum(c) == pytest.approx(1.0)
        assert implied_multipliers(c)[0] == pytest.approx(1.0)
    # cosine: w_i = (1 + cos(pi i / n)) / 2
    assert implied_multipliers(merge_weights("decay:cosine", 4)) == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)])


def test_implied_multipliers_of_the_other_weights():
    assert implied_multipliers(merge_weights("uniform", 4)) == pytest.approx([1, 0.75, 0.5, 0.25])
    assert implied_multipliers([0.1, 0.2, 0.7]) == pytest.approx([1.0, 0.9, 0.7])
    for bad in ([], [0.5, -0.1], [float("nan")], [float("inf"), 0.0]):
        with pytest.raises(ValueError, match="expected one or more finite numbers >= 0"):
            implied_multipliers(bad)


@pytest.mark.parametrize("method", ["decay:", "decay:sqrt", "decay:Linear", "decay:1-sqrt:2", "decay"])
def test_bad_shape_names_are_refused(method):
    with pytest.raises(ValueError) as e:
        merge_weights(method, 4)
    msg = str(e.value)
    assert repr(method) in msg
    assert "linear" in msg and "1-sqrt" in msg  # names what it expected


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_counts_are_refused(n):
    with pytest.raises(ValueError, match="n = .*: expected a number of checkpoints >= 1"):
        duality_weights("linear", n)


def test_help_documents_the_duality_weights(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("decay:linear", "decay:1-sqrt", "ema:DECAY", "duality"):
        assert text in out.replace("\n", " ").replace("  ", " ") or text in out
