"""Schedule-aware loss laws: pure numpy functions of a per-update LR sequence.

``lrs[i]`` is the LR of update ``i + 1`` (eta_1..eta_T); a law gives ``L(t)``, the loss of the
weights after ``t`` updates. ``W`` is the warmup: the updates up to the first peak of the LR
(:func:`warmup_of`); its LR area S_W enters ``S1``, its LR increases are not loss drops.

Multi-Power Law (Luo et al., ICLR 2025, arXiv 2503.12811, Eq. 8; as thu-yao-01-luo/MultiPowerLaw)::

    L(t)  = L0 + A * (S1(t) + S_W)^(-alpha) - LD(t)
    LD(t) = B * sum_{k=W+1..t} (eta_{k-1} - eta_k) * G(eta_k^(-gamma) * S_k(t)),  S_k(t) = sum_{tau=k..t} eta_tau
    G(x)  = 1 - (C x + 1)^(-beta)

LR-annealing law (Tissue et al. 2024, arXiv 2408.11029, Eq. 4)::

    L(t) = L0 + A * S1(t)^(-alpha) - C * S2(t),   S2(t) = sum_{i<=t} m_i,  m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)

(S1 includes the warmup's area; the annealing momentum starts after warmup.)

Parameters are kept in the papers' units (absolute LRs). The functions evaluate in units of a
reference LR ``lr_ref`` (the laws are exactly invariant under that rescaling, see
:meth:`Law.to_unit`), which keeps the fit well conditioned whatever the LR's magnitude.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class ForecastError(ValueError):
    """Bad input, named by file and key (or by argument)."""


_CHUNK = 2_000_000  # elements of a (steps x drops) block of the MPL sum
_ETA_FLOOR = 1e-12  # eta_k^(-gamma) of a zero LR (a decay to zero): x -> huge, G -> 1; no 0 * inf


def warmup_of(lrs: np.ndarray) -> int:
    """W: the 1-based update of the first peak of the LR's initial non-decreasing run (1 without warmup)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if lrs.size == 0:
        return 0
    drops = np.flatnonzero(np.diff(lrs) < 0)
    end = int(drops[0]) + 1 if drops.size else lrs.size
    return int(np.argmax(lrs[:end])) + 1


def check_lrs(lrs, what: str = "lrs") -> np.ndarray:
    arr = np.asarray(lrs, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ForecastError(f"{what}: expected a non-empty 1-D sequence of per-update LRs, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ForecastError(f"{what}: LRs must be finite and >= 0")
    if arr.sum() <= 0:
        raise ForecastError(f"{what}: every LR is 0")
    return arr


def _steps(T: int, steps: np.ndarray | None) -> np.ndarray:
    t = np.arange(1, T + 1) if steps is None else np.asarray(steps, dtype=np.int64)
    if t.size and (t.min() < 1 or t.max() > T):
        raise ForecastError(f"steps must lie in 1..{T} (the LR sequence's length); got {t.min()}..{t.max()}")
    return t


def _drops(lrs: np.ndarray, W: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, eta_{k-1} - eta_k) for the updates k = W+1..T whose LR changes (1-based k)."""
    k = np.arange(W + 1, lrs.size + 1)
    delta = lrs[k - 2] - lrs[k - 1] if k.size else np.zeros(0)
    nz = delta != 0
    return k[nz], delta[nz]


# -- Multi-Power Law ------------------------------------------------------------------------

@dataclass
class MPLTerms:
    """What the MPL needs of an LR sequence at some steps, independent of the parameters."""

    S: np.ndarray  # S1(t) + S_W at each step
    cum_t: np.ndarray  # sum_{tau<=t} eta_tau
    cum_k: np.ndarray  # sum_{tau<k} eta_tau for each drop k
    delta: np.ndarray  # eta_{k-1} - eta_k
    log_eta: np.ndarray  # log eta_k (floored)
    D: np.ndarray | None = None  # S_k(t) * eta_k^0, (steps x drops), kept when small enough

    def block(self, a: int, b: int) -> np.ndarray:
        if self.D is not None:
            return self.D[a:b]
        return np.maximum(self.cum_t[a:b, None] - self.cum_k[None, :], 0.0)  # S_k(t); 0 for k > t


def mpl_terms(lrs: np.ndarray, steps: np.ndarray | None = None, warmup: int | None = None,
              keep: int = 4 * _CHUNK) -> MPLTerms:
    lrs = np.asarray(lrs, dtype=np.float64)
    t = _steps(lrs.size, steps)
    W = warmup_of(lrs) if warmup is None else warmup
    cum = np.concatenate([[0.0], np.cumsum(lrs)])
    k, delta = _drops(lrs, W)
    terms = MPLTerms(cum[t], cum[t], cum[k - 1], delta, np.log(np.maximum(lrs[k - 1], _ETA_FLOOR)))
    if 0 < t.size * k.size <= keep:
        terms.D = terms.block(0, t.size)
    return terms


def mpl(lrs: np.ndarray, p: np.ndarray, steps: np.ndarray | None = None, warmup: int | None = None,
        jac: bool = False, terms: MPLTerms | None = None):
    """MPL loss at ``steps`` (default 1..T); ``p`` = (L0, A, alpha, B, C, beta, gamma) in the units of ``lrs``.

    With ``jac``, also d loss / d p, shape (len(steps), 7). ``terms`` (from :func:`mpl_terms` of the
    same ``lrs``, ``steps`` and ``warmup``) saves recomputing them across calls.
    """
    L0, A, alpha, B, C, beta, gamma = (float(v) for v in p)
    tm = terms if terms is not None else mpl_terms(lrs, steps, warmup)
    S, n, K = tm.S, tm.S.size, tm.delta.size
    with np.errstate(divide="ignore"):
        power = S ** -alpha
    LD = np.zeros(n)
    if jac:
        J = np.zeros((n, 7))
        J[:, 0] = 1.0
        J[:, 1] = power
        with np.errstate(invalid="ignore"):
            J[:, 2] = -A * power * np.log(S)
    if K:
        eta_g = np.exp(-gamma * tm.log_eta)
        rows = max(1, _CHUNK // K)
        for a in range(0, n, rows):
            x = tm.block(a, a + rows) * eta_g  # eta_k^(-gamma) S_k(t)
            u = C * x + 1.0
            log_u = np.log(u)
            upow = np.exp(-beta * log_u)  # (C x + 1)^(-beta), faster than a float power
            LD[a:a + rows] = (1.0 - upow) @ tm.delta
            if not jac:
                continue
            dG = beta * upow / u * x  # d G / d C;  d G / d gamma = -C ln(eta_k) dG
            J[a:a + rows, 3] = -LD[a:a + rows]
            J[a:a + rows, 4] = -B * (dG @ tm.delta)
            J[a:a + rows, 5] = -B * ((log_u * upow) @ tm.delta)
            J[a:a + rows, 6] = B * C * ((dG * tm.log_eta) @ tm.delta)
    pred = L0 + A * power - B * LD
    return (pred, J) if jac else pred


# -- LR-annealing law -----------------------------------------------------------------------

def annealing_areas(lrs: np.ndarray, lam: float, warmup: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after every update 1..T."""
    from scipy.signal import lfilter

    W = warmup_of(lrs) if warmup is None else warmup
    d = np.zeros(lrs.size)
    if lrs.size > 1:
        d[1:] = lrs[:-1] - lrs[1:]
    d[:W] = 0.0  # the momentum starts after warmup
    m = lfilter([1.0], [1.0, -lam], d)
    return np.cumsum(lrs), np.cumsum(m)


def annealing_terms(lrs: np.ndarray, steps: np.ndarray | None = None, warmup: int | None = None,
                    lam: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.asarray(lrs, dtype=np.float64)
    t = _steps(lrs.size, steps)
    S1, S2 = annealing_areas(lrs, lam, warmup)
    return S1[t - 1], S2[t - 1]


def annealing(lrs: np.ndarray, p: np.ndarray, steps: np.ndarray | None = None, warmup: int | None = None,
              jac: bool = False, terms: tuple | None = None, lam: float = 0.999):
    """Annealing-law loss at ``steps`` (default 1..T); ``p`` = (L0, A, alpha, C) in the units of ``lrs``."""
    L0, A, alpha, C = (float(v) for v in p)
    S1, S2 = terms if terms is not None else annealing_terms(lrs, steps, warmup, lam)
    power = S1 ** -alpha
    pred = L0 + A * power - C * S2
    if not jac:
        return pred
    return pred, np.stack([np.ones(S1.size), power, -A * power * np.log(S1), -S2], axis=1)


# -- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Law:
    name: str
    params: tuple[str, ...]
    fn: Callable[..., object]  # fn(lrs, p, steps, warmup, jac=False, terms=None, **options)
    terms: Callable[..., object]  # terms(lrs, steps, warmup, **options): the parameter-free part, for repeated calls
    unit: Callable[[dict[str, float], float], dict[str, float]]  # (raw params, r) -> params over lrs / r
    drop_params: tuple[str, ...]  # the parameters that only LR decay determines
    options: tuple[tuple[str, float], ...] = ()

    def to_unit(self, raw: dict[str, float], lr_ref: float) -> np.ndarray:
        """Raw (absolute-LR) parameters -> the parameters of the same law over ``lrs / lr_ref``."""
        u = self.unit(raw, lr_ref)
        return np.array([u[n] for n in self.params])

    def to_raw(self, unit: np.ndarray, lr_ref: float) -> dict[str, float]:
        raw = self.unit(dict(zip(self.params, (float(v) for v in unit), strict=True)), 1.0 / lr_ref)  # power maps: r -> 1/r inverts
        return {n: float(raw[n]) for n in self.params}


def _mpl_unit(p: dict[str, float], r: float) -> dict[str, float]:
    return {**p, "A": p["A"] * r ** -p["alpha"], "B": p["B"] * r, "C": p["C"] * r ** (1.0 - p["gamma"])}


def _annealing_unit(p: dict[str, float], r: float) -> dict[str, float]:
    return {**p, "A": p["A"] * r ** -p["alpha"], "C": p["C"] * r}


LAWS: dict[str, Law] = {
    "mpl": Law("mpl", ("L0", "A", "alpha", "B", "C", "beta", "gamma"), mpl, mpl_terms, _mpl_unit, ("B", "C", "beta", "gamma")),
    "annealing": Law("annealing", ("L0", "A", "alpha", "C"), annealing, annealing_terms, _annealing_unit, ("C",), (("lam", 0.999),)),
}


def get_law(name: str) -> Law:
    if name not in LAWS:
        raise ForecastError(f"unknown law {name!r}: expected one of {', '.join(LAWS)}")
    return LAWS[name]
