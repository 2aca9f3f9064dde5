"""The Gaussian noise-scale search: SmartNoise's scales, without its two-minute refusal.

SmartNoise 1.0.10 searches the Gaussian scale with OpenDP's unbounded ``binary_search_param``;
when the predicate overflows at the first band (scale 0.5), OpenDP's exception recovery
walks ~500 overflowing calls before failing (≈ 2 min of CPU per price, a DoS on /cost).
``sn.gaussian_scale`` refuses that case after one call and is otherwise OpenDP's own search
step for step (docstring of ``sn.gaussian_scale``; BENCHMARKS.md).
"""

from __future__ import annotations

import math
import time
from typing import Any

import opendp.prelude as dp
import pytest
from opendp.mod import enable_features
from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace
from test_smartnoise_engine import DATASET, ENGINE, request

from chalicelib.engines import smartnoise_engine as sn
from chalicelib.errors import EngineRefused

# (ε, δ, lower, upper, max_contrib) that SmartNoise prices today: small and large ε and δ,
# a count's bounds, negative bounds, bounds next to the refusal edge, several contributions.
PRICED = [
    (0.1, 1e-5, 0, 1, 1),
    (1.0, 1e-9, 0, 10, 3),
    (5.0, 1e-5, -5, 5, 1),
    (0.5, 1e-7, 0, 100, 1),
    (2.0, 1e-6, -20.5, 3.25, 2),
    (1.0, 1e-5, 0, 1, 5),
]
# ... and that SmartNoise refuses after ~2 minutes ("Unable to find appropriate noise scale").
REFUSED = [
    (1.0, 1e-5, 0, 7000, 1),  # SUM(body_mass_g) of PENGUIN
    (1.0, 1e-5, 0, 100, 3),
    (0.01, 1e-9, -1000, 1000, 1),
]


class Unsearched(Gaussian):  # type: ignore[misc]
    """A Gaussian mechanism whose constructor does not search (its scale stays None)."""

    def _compute_noise_scale(self) -> None:
        pass


def unsearched(epsilon: float, delta: float, lower: float, upper: float, contrib: int) -> Any:
    return Unsearched(epsilon, delta=delta, lower=lower, upper=upper, max_contrib=contrib)


def close(
    scale: float, epsilon: float, delta: float, lower: float, upper: float, contrib: int
) -> Any:
    """SmartNoise's chain at ``scale`` (as in ``Gaussian._compute_noise_scale``)."""
    enable_features("floating-point", "contrib")
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    chain = (
        space
        >> dp.t.then_clamp(bounds=(float(math.floor(lower)), float(math.ceil(upper))))
        >> dp.t.then_sum()
        >> dp.m.then_gaussian(scale)
    )
    adp = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(chain), delta=delta)
    return adp.check(contrib, (epsilon, delta))


@pytest.mark.parametrize(("epsilon", "delta", "lower", "upper", "contrib"), PRICED)
def test_the_gaussian_scale_is_smartnoises_own_bit_for_bit(
    epsilon: float,
    delta: float,
    lower: float,
    upper: float,
    contrib: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = Gaussian(epsilon, delta=delta, lower=lower, upper=upper, max_contrib=contrib)
    # ours must not fall back on SmartNoise's search to get there
    monkeypatch.setattr(Gaussian, "_compute_noise_scale", lambda self: pytest.fail("fallback"))
    ours = sn.gaussian_scale(unsearched(epsilon, delta, lower, upper, contrib))
    assert ours == reference.scale
    # never less noise than the guarantee needs: the chain at that scale is (ε, δ)-DP
    assert close(ours, epsilon, delta, lower, upper, contrib)


@pytest.mark.parametrize(("epsilon", "delta", "lower", "upper", "contrib"), REFUSED)
def test_what_smartnoise_can_never_calibrate_is_refused_in_a_second(
    epsilon: float, delta: float, lower: float, upper: float, contrib: int
) -> None:
    """The premises of the refusal hold, so SmartNoise's own search can only fail here.

    OpenDP's search asks scale 0 (answers false), then 0.5 (raises): it then bisects (0, 0.5)
    for the edge of the raising region and searches below that edge, at negative scales,
    which ``make_gaussian`` always rejects.
    """
    assert close(0.0, epsilon, delta, lower, upper, contrib) is False
    with pytest.raises(Exception, match="Overflow"):
        close(0.5, epsilon, delta, lower, upper, contrib)
    with pytest.raises(Exception, match="scale"):
        close(-0.25, epsilon, delta, lower, upper, contrib)
    started = time.monotonic()
    with pytest.raises(ValueError, match="Unable to find appropriate noise scale"):
        sn.gaussian_scale(unsearched(epsilon, delta, lower, upper, contrib))
    assert time.monotonic() - started < 5  # SmartNoise: ~120 s


def test_a_sum_over_bounds_0_0_is_refused_at_once_as_smartnoise_refuses_it_in_4_minutes() -> None:
    """Sensitivity 0: every band answers true like scale 0, so OpenDP's search goes negative,
    bisects (-0.5, 0) back to 0.0 through ~1,000 raising calls (231 s measured) and finds no
    bounds from there ("unable to infer bounds")."""
    assert all(close(band, 1.0, 1e-5, 0, 0, 1) for band in sn._GAUSSIAN_BANDS)
    with pytest.raises(Exception, match="scale"):
        close(-5e-324, 1.0, 1e-5, 0, 0, 1)  # the smallest negative float is refused too
    started = time.monotonic()
    with pytest.raises(ValueError, match="unable to infer bounds"):
        sn.gaussian_scale(unsearched(1.0, 1e-5, 0, 0, 1))
    assert time.monotonic() - started < 5


def test_pricing_the_gaussian_sum_of_body_mass_is_a_fast_422_and_is_remembered() -> None:
    query = request("SELECT SUM(body_mass_g) FROM df", "0.9", mechanisms={"sum_float": "gaussian"})
    started = time.monotonic()
    with pytest.raises(EngineRefused, match="Unable to find appropriate noise scale") as first:
        ENGINE.cost(DATASET, query)
    assert time.monotonic() - started < 5  # before: ~116 s
    assert first.value.status_code == 422
    assert first.value.code == "engine_error"
    started = time.monotonic()
    with pytest.raises(EngineRefused) as again:
        ENGINE.cost(DATASET, query)
    assert time.monotonic() - started < 1  # the refusal is remembered like a scale
    assert str(again.value) == str(first.value)


def test_a_remembered_gaussian_scale_is_the_one_found() -> None:
    key = (0.3, 1e-6, 0, 1, 1)
    found = sn.MemoGaussian(0.3, delta=1e-6, lower=0, upper=1, max_contrib=1).scale
    again = sn.MemoGaussian(0.3, delta=1e-6, lower=0, upper=1, max_contrib=1).scale
    assert found == again == sn.gaussian_scale(unsearched(*key))


@pytest.mark.parametrize(
    ("epsilon", "lower", "upper", "contrib"),
    [(1.0, 0, 7000, 1), (0.01, 0, 1, 1), (10.0, -1e6, 1e6, 5), (1.0, 0, 1e-6, 1)],
)
def test_laplace_searches_within_explicit_bounds_so_has_no_such_pathology(
    epsilon: float, lower: float, upper: float, contrib: int
) -> None:
    """SmartNoise's Laplace search is bounded by (rough/1e7, rough·1e7): no overflow, no
    exception path, ~60 calls of ~1 ms."""
    started = time.monotonic()
    scale = Laplace(epsilon, lower=lower, upper=upper, max_contrib=contrib).scale
    assert time.monotonic() - started < 5
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    summed = space >> dp.t.then_clamp(bounds=(float(lower), float(upper))) >> dp.t.then_sum()
    assert (summed >> dp.m.then_laplace(scale)).check(contrib, epsilon)
    assert not (summed >> dp.m.then_laplace(scale * (1 - 1e-6))).check(contrib, epsilon)
