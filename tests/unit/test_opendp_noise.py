"""The noise the engine releases matches the ε it charges (Laplace count on PENGUIN).

A count has sensitivity ``d_in`` (= ``max_ids``) under the symmetric distance, so a pure-DP
charge of ε for a Laplace count promises discrete-Laplace noise of scale at least
``b = d_in / ε``. :func:`check_noise_matches_charge` tests that promise from N releases:

- ``S = Σ |X_i|`` (X_i = release − true count). Under scale ``b``, ``E|X| = m1`` and
  ``E[X²] = m2`` (closed forms below). For independent non-negative variables,
  ``P(S ≤ N·m1 − t) ≤ exp(−t² / (2·N·m2))`` (one-sided Bernstein bound; Maurer 2003). The
  check fails when ``S < N·m1 − t`` with ``t = sqrt(2·N·m2·ln(10⁶))``: a release noised as
  charged (or more) fails with probability **below 1e-6**.
- Power: a release with half that scale passes only if ``S`` reaches the threshold; a
  Chernoff bound on that, computed from the exact moment generating function of ``|X|``,
  is asserted below 1e-6 too.

With the numbers used here (scale 2, so ε = 0.5; 500 releases) the threshold is 630.5,
``E[S]`` is 959.5 when noised as charged and 425.5 at half the scale, and the Chernoff bound
on an under-noised sample passing is 4.5e-14.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from opendp_pipelines import DATASET, META, TRUE_COUNT, body, laplace_count, loaded

from chalicelib.engines.opendp_engine import ENGINE

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")

FALSE_FAILURE = 1e-6
RELEASES = 500
SCALE = 2.0  # the count's Laplace scale, so ε = 0.5


def discrete_laplace_moments(scale: float) -> tuple[float, float]:
    """(E|X|, E[X²]) of discrete Laplace noise, P(X = k) ∝ exp(−|k| / scale)."""
    alpha = math.exp(-1.0 / scale)
    return 2 * alpha / (1 - alpha**2), 2 * alpha / (1 - alpha) ** 2


def threshold(charged_epsilon: Decimal, d_in: int, releases: int) -> float:
    """The least Σ|noise| that noise of the charged scale reaches with prob. ≥ 1 − 1e-6."""
    scale = d_in / float(charged_epsilon)
    mean_abs, second = discrete_laplace_moments(scale)
    slack = math.sqrt(2 * releases * second * math.log(1 / FALSE_FAILURE))
    return releases * mean_abs - slack


def check_noise_matches_charge(
    released: list[int], true_count: int, charged_epsilon: Decimal, d_in: int
) -> None:
    """Fail when the releases carry less noise than ``charged_epsilon`` implies."""
    total = sum(abs(value - true_count) for value in released)
    least = threshold(charged_epsilon, d_in, len(released))
    assert total >= least, (
        f"Σ|noise| = {total} over {len(released)} releases is below {least:.1f}: "
        f"less noise than a charge of ε = {charged_epsilon} implies"
    )


def false_pass_bound(scale: float, least: float, releases: int) -> float:
    """Chernoff bound on P(Σ|X_i| ≥ least) for discrete-Laplace noise of ``scale``."""
    alpha = math.exp(-1.0 / scale)
    log_best = 0.0
    for step in range(1, 400):
        lam = step / 400 * (-math.log(alpha))  # 0 < λ < −ln α keeps the MGF finite
        ratio = alpha * math.exp(lam)
        mgf = (1 - alpha) / (1 + alpha) * (1 + 2 * ratio / (1 - ratio))
        log_best = min(log_best, releases * math.log(mgf) - lam * least)
    return math.exp(log_best)


@pytest.mark.parametrize(
    ("scale_factor", "passes"),
    [(1.0, True), (0.5, False)],
    ids=["noised-as-charged", "under-noised-half-scale"],
)
def test_released_count_noise_matches_the_charged_epsilon(
    scale_factor: float, passes: bool
) -> None:
    d_in = META["max_ids"]
    charged = ENGINE.cost(DATASET, ENGINE.parse(body(laplace_count(SCALE)))).epsilon
    assert charged == Decimal("0.5")
    released_by = ENGINE.parse(body(laplace_count(SCALE * scale_factor)))
    data = loaded()
    released = [ENGINE.execute(data, released_by)["value"] for _ in range(RELEASES)]
    if passes:
        check_noise_matches_charge(released, TRUE_COUNT, charged, d_in)
    else:
        with pytest.raises(AssertionError, match="less noise than a charge"):
            check_noise_matches_charge(released, TRUE_COUNT, charged, d_in)


def test_the_check_has_the_stated_error_rates() -> None:
    least = threshold(Decimal("0.5"), 1, RELEASES)
    mean_abs, _ = discrete_laplace_moments(SCALE)
    assert 0 < least < RELEASES * mean_abs  # the check has slack below the expectation
    assert false_pass_bound(SCALE / 2, least, RELEASES) < FALSE_FAILURE
    # the moments are right: compare with a direct sum over the distribution
    alpha = math.exp(-1 / SCALE)
    weights = {k: alpha ** abs(k) for k in range(-200, 201)}
    norm = sum(weights.values())
    direct_abs = sum(abs(k) * w for k, w in weights.items()) / norm
    direct_sq = sum(k * k * w for k, w in weights.items()) / norm
    assert math.isclose(direct_abs, mean_abs, rel_tol=1e-9)
    assert math.isclose(direct_sq, discrete_laplace_moments(SCALE)[1], rel_tol=1e-9)


@pytest.mark.parametrize(
    ("released_epsilon", "passes"),
    [(0.5, True), (1.0, False)],
    ids=["polars-noised-as-charged", "polars-under-noised-half-scale"],
)
def test_a_polars_release_carries_the_noise_its_charge_implies(
    released_epsilon: float, passes: bool
) -> None:
    """The same check on engine ``opendp_polars`` (``dp.len()``: a discrete-Laplace count).

    The charge is that of ε = 0.5 (scale ≥ 2); the under-noised variant releases the plan
    calibrated for ε = 1 (scale 1, half) and must be caught.
    """
    from chalicelib.engines.polars_engine import ENGINE as POLARS

    def request(epsilon: float) -> Any:
        return POLARS.parse(
            {"plan": [{"select": [{"fn": "dp.len", "args": []}]}], "epsilon": epsilon}
        )

    d_in = META["max_ids"]
    charged = POLARS.cost(DATASET, request(0.5)).epsilon
    assert Decimal("0.4999") < charged <= Decimal("0.5")
    released_by, data = request(released_epsilon), loaded()
    released = [POLARS.execute(data, released_by)["records"][0]["len"] for _ in range(RELEASES)]
    if passes:
        check_noise_matches_charge(released, TRUE_COUNT, charged, d_in)
    else:
        with pytest.raises(AssertionError, match="less noise than a charge"):
            check_noise_matches_charge(released, TRUE_COUNT, charged, d_in)


# --- zCDP (Gaussian noise) on engine opendp_polars ----------------------------------------------
# A ρ charge for a count (sensitivity d_in) promises discrete Gaussian noise of σ ≥
# d_in / sqrt(2ρ). The check uses S = Σ X_i² and the same one-sided Bernstein bound on
# non-negative variables with E[X²] = m2 and E[X⁴] = m4 (exact sums over the distribution):
# it fails when S < N·m2 − sqrt(2·N·m4·ln(10⁶)), so a release noised as charged fails with
# probability below 1e-6; a Chernoff bound (exact MGF of X²) bounds a half-σ pass.
GAUSS_RHO = 0.125  # σ = 2 at d_in = 1
GAUSS_RELEASES = 400


def discrete_gaussian_moments(sigma: float, theta: float = 0.0) -> tuple[float, float, float]:
    """(E[X²], E[X⁴], E[exp(θ X²)]) of the discrete Gaussian, P(X = k) ∝ exp(−k²/2σ²)."""
    support = range(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    weights = [math.exp(-(k * k) / (2 * sigma * sigma)) for k in support]
    norm = sum(weights)
    m2 = sum(k**2 * w for k, w in zip(support, weights, strict=True)) / norm
    m4 = sum(k**4 * w for k, w in zip(support, weights, strict=True)) / norm
    tilted = sum(math.exp(-(k * k) * (1 / (2 * sigma * sigma) - theta)) for k in support)
    mgf = tilted / norm
    return m2, m4, mgf


def gaussian_threshold(sigma: float, releases: int) -> float:
    m2, m4, _ = discrete_gaussian_moments(sigma)
    return releases * m2 - math.sqrt(2 * releases * m4 * math.log(1 / FALSE_FAILURE))


def gaussian_false_pass_bound(sigma: float, least: float, releases: int) -> float:
    """Chernoff bound on P(Σ X_i² ≥ least) for discrete Gaussian noise of ``sigma``."""
    log_best = 0.0
    limit = 1 / (2 * sigma * sigma)  # the MGF of X² is finite for θ below this
    for step in range(1, 180):  # θ up to 0.9 of the limit: the support still covers the tail
        theta = step / 200 * limit
        _, _, mgf = discrete_gaussian_moments(sigma, theta)
        log_best = min(log_best, releases * math.log(mgf) - theta * least)
    return math.exp(log_best)


def test_the_gaussian_check_has_the_stated_error_rates() -> None:
    sigma = 1 / math.sqrt(2 * GAUSS_RHO)
    least = gaussian_threshold(sigma, GAUSS_RELEASES)
    m2, _, _ = discrete_gaussian_moments(sigma)
    assert 0 < least < GAUSS_RELEASES * m2
    assert gaussian_false_pass_bound(sigma / 2, least, GAUSS_RELEASES) < FALSE_FAILURE
    assert math.isclose(m2, sigma**2, rel_tol=1e-6)  # σ = 2: the lattice barely matters


@pytest.mark.parametrize(
    ("released_rho", "passes"),
    [(GAUSS_RHO, True), (4 * GAUSS_RHO, False)],
    ids=["polars-zcdp-noised-as-charged", "polars-zcdp-under-noised-half-sigma"],
)
def test_a_polars_zcdp_release_carries_the_gaussian_noise_its_charge_implies(
    released_rho: float, passes: bool
) -> None:
    from chalicelib.engines.polars_engine import ENGINE as POLARS

    def request(rho: float) -> Any:
        plan = [{"select": [{"fn": "dp.len", "args": []}]}]
        return POLARS.parse({"plan": plan, "rho": rho, "fixed_delta": 1e-6})

    charged = request(GAUSS_RHO)
    POLARS.cost(DATASET, charged)  # priced at ρ = 0.125 (σ ≥ 2)
    sigma = META["max_ids"] / math.sqrt(2 * GAUSS_RHO)
    released_by, data = request(released_rho), loaded()
    squares = sum(
        (POLARS.execute(data, released_by)["records"][0]["len"] - TRUE_COUNT) ** 2
        for _ in range(GAUSS_RELEASES)
    )
    least = gaussian_threshold(sigma, GAUSS_RELEASES)
    assert (squares >= least) is passes, (squares, least)
