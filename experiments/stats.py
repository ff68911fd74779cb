"""The statistics every claim rests on: Student's t intervals over seeds, seed-paired differences
(and their t test, for Holm's correction over many of them), Welch's interval for two independent
groups, and the binomial standard error of one accuracy.
Plain Python (no torch, no SciPy), so the result writer, the Makefile's staleness check and the
report can all use it.
"""
from __future__ import annotations

import functools
import math
import statistics

LEVEL = 0.95


def t_density(x: float, df: float) -> float:
    """The density of Student's t with `df` degrees of freedom at x."""
    return _t_density_function(df)(x)


def _log_norm(df: float) -> float:
    """log of the normalising constant c of t(df)'s density c (1 + x^2 / df)^(-(df + 1) / 2)."""
    return math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)


def _t_density_function(df: float):
    """The density of t(df) as a function of x, its normalising constant computed once."""
    log_c = _log_norm(df)
    return lambda x: math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom. With t = sqrt(df) tan(a) the density
    times dt is c sqrt(df) cos(a)^(df - 1) da, so P(0 <= T <= |t|) is that over a in
    [0, atan(|t| / sqrt(df))]: a bounded, smooth integrand on a bounded interval, however far out t
    lies (Simpson's rule on the density itself failed beyond |t| ~ 1e4). 4,000 panels give ~1e-12."""
    scale = math.exp(_log_norm(df)) * math.sqrt(df)
    end, panels = math.atan(abs(t) / math.sqrt(df)), 4000
    h = end / panels

    def f(a: float) -> float:
        return math.cos(a) ** (df - 1)
    area = f(0) + f(end) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, panels))
    half = min(0.5, scale * area * h / 3)
    return 0.5 + half if t >= 0 else 0.5 - half


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction p of Student's t(df) lies (df need not be whole, as
    Welch's is). Newton's method from the normal quantile, inside a bracket that bisection takes
    over from when a step would leave it (far tails): a handful of CDF evaluations where bisection
    alone took 64. Quantiles beyond +-1000 come back clamped there."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = -1e3, 1e3
    t = min(max(statistics.NormalDist().inv_cdf(p), lo), hi)
    for _ in range(200):
        cdf, density = t_cdf(t, df), t_density(t, df)
        lo, hi = (t, hi) if cdf < p else (lo, t)
        step = (cdf - p) / density if density > 0 else math.inf
        new = t - step if lo < t - step < hi else (lo + hi) / 2
        if abs(new - t) <= 1e-12 * max(1.0, abs(t)) or hi - lo <= 1e-12 * max(1.0, abs(t)):
            return new
        t = new
    return t


def interval(values: list[float], level: float = LEVEL) -> dict:
    """{mean, std, n, ci95}: the sample mean, sample standard deviation and the Student's t
    interval of the mean (None with fewer than two values: one value has no spread to go on)."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": 0.0, "n": 1, "ci95": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half]}


def paired_difference(values: dict, control: dict, level: float = LEVEL) -> dict:
    """Seed-paired difference values[seed] - control[seed] over the seeds both have:
    {diff_mean, ci95, n}. Pairing removes what a seed shares across variants (its initial weights,
    batch order), so this interval is narrower than the one of two independent means."""
    d = _paired(values, control, level)
    return {"diff_mean": d["mean"], "ci95": d["ci95"], "n": d["n"]}


def _paired(values: dict, control: dict, level: float = LEVEL) -> dict:
    """interval() of values[seed] - control[seed] over the seeds both have."""
    seeds = sorted(set(values) & set(control), key=str)
    return interval([values[s] - control[s] for s in seeds], level)


def paired_p_value(values: dict, control: dict) -> float | None:
    """Two-sided p-value of the seed-paired t test that values[seed] - control[seed] averages zero
    over the seeds both have (None with fewer than two). The test behind paired_difference's
    interval: p < 1 - LEVEL exactly where that interval excludes zero."""
    d = _paired(values, control)
    if d["n"] < 2:
        return None
    if d["std"] == 0:
        return 1.0 if d["mean"] == 0 else 0.0
    t = d["mean"] / (d["std"] / math.sqrt(d["n"]))
    return min(1.0, 2 * (1 - t_cdf(abs(t), d["n"] - 1)))


def holm(p_values: list[float | None], level: float = LEVEL) -> list[bool]:
    """Which of these hypotheses Holm's step-down procedure rejects, so that the chance of rejecting
    any true one among them all stays at most 1 - level (Holm 1979): the k-th smallest p-value
    (k = 0, 1, ...) is rejected while it is at most (1 - level) / (m - k); the first that is not
    ends the rejections. A missing p-value (None) is never rejected."""
    m, alpha = len(p_values), 1 - level
    rejected = [False] * m
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    for k, (p, i) in enumerate(ranked):
        if p > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


def unpaired_difference(values: list[float], other: list[float], level: float = LEVEL) -> dict:
    """Difference of the means of two independent groups, mean(values) - mean(other), with Welch's
    t interval (unequal variances): {diff_mean, ci95, n, df}, n = (len(values), len(other)). For
    groups that share nothing a seed could pair, e.g. two different models."""
    a, b = interval(values, level), interval(other, level)
    if a["ci95"] is None or b["ci95"] is None:
        diff = None if a["mean"] is None or b["mean"] is None else a["mean"] - b["mean"]
        return {"diff_mean": diff, "ci95": None, "n": [a["n"], b["n"]], "df": None}
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    diff = a["mean"] - b["mean"]
    if va + vb == 0:
        return {"diff_mean": diff, "ci95": [diff, diff], "n": [a["n"], b["n"]], "df": None}
    df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
    half = t_quantile((1 + level) / 2, df) * math.sqrt(va + vb)
    return {"diff_mean": diff, "ci95": [diff - half, diff + half], "n": [a["n"], b["n"]], "df": df}


def excludes_zero(ci) -> bool:
    """Whether an interval lies wholly above or below zero (False without an interval)."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def binomial_se(accuracy: float, images: int) -> float:
    """Standard error of one accuracy measured on `images` independent images: sqrt(p(1-p)/n)."""
    return math.sqrt(accuracy * (1 - accuracy) / images)
