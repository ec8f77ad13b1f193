"""The bootstrap slope interval and the rate verdicts (ntkit.experiments.statistics), against
data simulated from known power laws: the interval must cover the true exponent at about its
stated rate, and a verdict must tell a drift shrinking like m^-1/2 from one shrinking like m^-1."""
import numpy as np
import pytest

from ntkit.experiments.statistics import (CONSISTENT, NOT_CONSISTENT, UNDETERMINED,
                                          fit_slope_interval, rate_verdict)

WIDTHS = [64, 128, 256, 512, 1024, 2048]


def simulate(rate, inits, noise, rng, widths=WIDTHS):
    """y = 3 m^rate times independent lognormal noise of log-standard deviation ``noise``."""
    return [3.0 * m ** rate * np.exp(noise * rng.standard_normal(inits)) for m in widths]


def test_point_estimate_is_the_least_squares_slope_of_the_means():
    rng = np.random.default_rng(1)
    samples = simulate(-0.7, 5, 0.3, rng)
    fit = fit_slope_interval(WIDTHS, samples, n_boot=200)
    ref_slope, ref_icpt = np.polyfit(np.log(WIDTHS), np.log([s.mean() for s in samples]), 1)
    assert fit.slope == pytest.approx(ref_slope, abs=1e-12)
    assert fit.intercept == pytest.approx(ref_icpt, abs=1e-12)
    assert fit.low < fit.slope < fit.high


def test_noise_free_power_law_gives_exact_slope_and_degenerate_interval():
    samples = [[2.0 * m ** -1.0] * 4 for m in WIDTHS]
    fit = fit_slope_interval(WIDTHS, samples, n_boot=200)
    assert fit.slope == pytest.approx(-1.0, abs=1e-12)
    assert fit.low == pytest.approx(-1.0, abs=1e-12) and fit.high == pytest.approx(-1.0, abs=1e-12)


def test_interval_covers_the_true_exponent_at_about_its_level():
    # 300 simulated experiments, 8 inits per width, 30% noise: a 90% interval should contain
    # the true rate in about 90% of them. Percentile bootstraps under-cover slightly with 8
    # inits; a binomial 300-trial standard error is 1.7%, so [0.80, 0.97] fails a bias larger
    # than ~6 standard errors (e.g. an interval built from one init per width, or a wrong axis).
    rng = np.random.default_rng(7)
    hits = 0
    for rep in range(300):
        fit = fit_slope_interval(WIDTHS, simulate(-1.0, 8, 0.3, rng), level=0.9, n_boot=400,
                                 seed=rep)
        hits += fit.contains(-1.0)
    assert 0.80 <= hits / 300 <= 0.97


def test_interval_narrows_with_more_inits():
    rng = np.random.default_rng(3)
    few = fit_slope_interval(WIDTHS, simulate(-1.0, 3, 0.3, rng), n_boot=1000)
    many = fit_slope_interval(WIDTHS, simulate(-1.0, 48, 0.3, rng), n_boot=1000)
    assert many.width < 0.5 * few.width


def test_drift_shrinking_like_inverse_sqrt_is_not_consistent_with_inverse_width():
    rng = np.random.default_rng(11)
    fit = fit_slope_interval(WIDTHS, simulate(-0.5, 16, 0.2, rng))
    v = rate_verdict(fit, -1.0, alternative=-0.5, source="Lee et al. 2019")
    assert v["verdict"] == NOT_CONSISTENT
    assert rate_verdict(fit, -0.5)["verdict"] == CONSISTENT
    assert rate_verdict(fit, -0.5, alternative=-1.0)["verdict"] == CONSISTENT
    assert v["source"] == "Lee et al. 2019" and v["interval"] == [fit.low, fit.high]


def test_too_noisy_to_tell_the_rates_apart_is_undetermined():
    # the means follow m^-0.75 exactly, but the inits at each width spread by a factor 25
    widths = [64, 128, 256]
    fit = fit_slope_interval(widths, [[m ** -0.75 * f for f in (0.2, 1.0, 5.0)] for m in widths])
    assert fit.slope == pytest.approx(-0.75, abs=1e-12)
    assert fit.contains(-1.0) and fit.contains(-0.5)
    assert rate_verdict(fit, -1.0, alternative=-0.5)["verdict"] == UNDETERMINED


def test_asymptotic_range_drops_small_widths():
    # a pre-asymptotic bump at the two smallest widths; the fit over m >= 256 recovers -1
    samples = [[(5.0 if m < 256 else 1.0) * m ** -1.0, (5.0 if m < 256 else 1.0) * m ** -1.0 * 1.01]
               for m in WIDTHS]
    fit = fit_slope_interval(WIDTHS, samples, x_min=256, n_boot=200)
    assert fit.x == [256, 512, 1024, 2048]
    assert fit.slope == pytest.approx(-1.0, abs=0.01)


@pytest.mark.parametrize("x, samples, match", [
    ([1, 2], [[1, 2], [1, 2]], "at least 3 widths"),
    ([1, 2, 4], [[1, 2], [1], [1, 2]], "at least 2 initializations"),
    ([1, 2, 4], [[1, 2], [1, -2], [1, 2]], "positive and finite"),
    ([1, 2, 4], [[1, 2], [1, np.nan], [1, 2]], "positive and finite"),
    ([1, 2, 2], [[1, 2], [1, 2], [1, 2]], "distinct"),
    ([1, 2, 4], [[1, 2], [1, 2]], "one group"),
])
def test_bad_measurements_are_refused(x, samples, match):
    with pytest.raises(ValueError, match=match):
        fit_slope_interval(x, samples, n_boot=200)


def test_resampling_is_reproducible_from_the_seed():
    rng = np.random.default_rng(2)
    samples = simulate(-1.0, 5, 0.3, rng)
    a = fit_slope_interval(WIDTHS, samples, seed=4)
    b = fit_slope_interval(WIDTHS, samples, seed=4)
    assert (a.low, a.high) == (b.low, b.high)
