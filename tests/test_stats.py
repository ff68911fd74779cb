"""experiments/stats.py against values computed by hand (and Student's t tables)."""
import math

import pytest

from experiments import stats


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (120, 1.9799)])
def test_t_quantiles_match_the_tables(df, t):
    assert stats.t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert stats.t_cdf(stats.t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)


def test_interval_of_four_values():
    # mean 2.5, sample std sqrt(5/3); half-width t(0.975, 3) * s / 2 = 3.18245 * 1.29099 / 2
    s = stats.interval([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["n"] == 4 and s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["ci95"] == pytest.approx([2.5 - 2.05426, 2.5 + 2.05426], abs=1e-4)


def test_one_value_has_no_interval_and_none_has_no_mean():
    assert stats.interval([0.9]) == {"mean": 0.9, "std": 0.0, "n": 1, "ci95": None}
    assert stats.interval([]) == {"mean": None, "std": None, "n": 0, "ci95": None}


def test_paired_difference_uses_only_shared_seeds():
    # differences on seeds 0-2: 0.01, 0.03, 0.02 -> mean 0.02, sd 0.01, half-width 4.30265 * 0.01 / sqrt(3)
    d = stats.paired_difference({0: 0.81, 1: 0.93, 2: 0.87, 3: 0.5}, {0: 0.80, 1: 0.90, 2: 0.85})
    assert d["n"] == 3 and d["diff_mean"] == pytest.approx(0.02)
    assert d["ci95"] == pytest.approx([0.02 - 0.024841, 0.02 + 0.024841], abs=1e-6)
    assert not stats.excludes_zero(d["ci95"])           # -0.0048 .. 0.0448 includes zero
    assert stats.excludes_zero([0.001, 0.002]) and stats.excludes_zero([-0.3, -0.1])
    assert not stats.excludes_zero(None)


def test_pairing_removes_what_seeds_share():
    # two variants whose seeds vary a lot together: independent intervals overlap, the paired one does not
    a = {s: 0.85 + 0.02 * s for s in range(5)}
    b = {s: 0.85 + 0.02 * s + 0.003 + 0.0005 * (s % 2) for s in range(5)}
    ia, ib = stats.interval(list(a.values())), stats.interval(list(b.values()))
    assert ia["ci95"][1] > ib["ci95"][0]                  # overlapping
    assert stats.excludes_zero(stats.paired_difference(b, a)["ci95"])


def test_binomial_standard_error():
    assert stats.binomial_se(0.9, 6000) == pytest.approx(math.sqrt(0.09 / 6000))   # 0.387 pp
    assert stats.binomial_se(0.9, 10000) == pytest.approx(0.003)


def test_unpaired_difference_is_welchs_interval():
    # equal spreads and sizes: Welch's df is 2(n - 1) = 4 and the half-width t(0.975, 4) * sqrt(2/3)
    d = stats.unpaired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert d["diff_mean"] == pytest.approx(-1.0) and d["df"] == pytest.approx(4.0) and d["n"] == [3, 3]
    assert d["ci95"] == pytest.approx([-1 - 2.7764 * (2 / 3) ** 0.5, -1 + 2.7764 * (2 / 3) ** 0.5], abs=1e-4)
    # unequal spreads and sizes (checked against scipy.stats.ttest_ind(equal_var=False)):
    # df = 1.75^2 / ((5/12)^2 / 3 + (4/3)^2 / 2) = 3.2347, interval [-5.5423, 2.5423]
    d = stats.unpaired_difference([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0])
    assert d["df"] == pytest.approx(3.2347, abs=1e-4)
    assert d["ci95"] == pytest.approx([-5.5423, 2.5423], abs=1e-4)


def test_unpaired_difference_without_spread():
    assert stats.unpaired_difference([0.9], [0.8, 0.85])["ci95"] is None          # one value: no interval
    assert stats.unpaired_difference([0.9, 0.9], [0.8, 0.8])["ci95"] == pytest.approx([0.1, 0.1])


def test_t_quantile_reaches_the_far_tails_and_clamps_beyond_its_bracket():
    assert stats.t_quantile(0.9995, 1) == pytest.approx(636.6192, rel=1e-5)       # tables: t(0.9995, 1)
    assert stats.t_quantile(1e-6, 2) == pytest.approx(-707.1063, rel=1e-4)
    assert stats.t_quantile(1e-6, 1) == pytest.approx(-1e3)                       # beyond +-1000: clamped
    assert stats.t_quantile(0.025, 9) == pytest.approx(-stats.t_quantile(0.975, 9), abs=1e-9)


def test_paired_p_value_is_the_t_test_behind_the_paired_interval():
    # differences 0.01, 0.03, 0.02: t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3 on 2 df, whose two-sided
    # p-value has the closed form 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14) = 0.074180
    values, control = {0: 0.81, 1: 0.93, 2: 0.87, 3: 0.5}, {0: 0.80, 1: 0.90, 2: 0.85}
    assert stats.paired_p_value(values, control) == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-9)
    assert stats.paired_p_value({0: 0.9}, {0: 0.8}) is None                 # one seed: no test
    assert stats.paired_p_value({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7}) < 1e-12  # the same gain every seed, to rounding
    assert stats.paired_p_value({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8}) == 1.0
    # p < 0.05 exactly where the 95% interval excludes zero
    for shift in (0.0, 0.002, 0.004, 0.006, 0.01, -0.005):
        a = {s: 0.85 + 0.01 * math.sin(3 * s) for s in range(10)}
        b = {s: a[s] + shift + 0.004 * math.cos(5 * s) for s in range(10)}
        p, d = stats.paired_p_value(b, a), stats.paired_difference(b, a)
        assert (p < 0.05) == stats.excludes_zero(d["ci95"]), (shift, p, d)


def test_holm_steps_down_and_stops_at_the_first_kept_hypothesis():
    # m = 4 at 5%: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 are rejected; 0.03 > 0.05/2 stops, so 0.04 is kept
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # a missing p-value counts in m and is never rejected: 0.001 <= 0.05/3, then 0.03 > 0.05/2
    assert stats.holm([0.03, 0.001, None]) == [False, True, False]
    # both below their thresholds, the last at the full 5%
    assert stats.holm([0.02, 0.049]) == [True, True]
    assert stats.holm([]) == [] and stats.holm([0.2]) == [False]
    # uncorrected, 0.04 would pass; Holm never rejects what the uncorrected test keeps
    assert all(p < 0.05 for p, r in zip([0.01, 0.04, 0.03, 0.005], stats.holm([0.01, 0.04, 0.03, 0.005])) if r)


def test_t_cdf_holds_far_out_in_the_tails():
    # closed forms: df 1 is Cauchy's, 1/2 + atan(t)/pi; df 2 is 1/2 + t / (2 sqrt(2 + t^2))
    for t in (0.3, 3.0, 1e3, 1e8, -1e8):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
