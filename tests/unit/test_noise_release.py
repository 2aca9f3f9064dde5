"""SmartNoise's per-value release with its OpenDP measurement built once per scale (issue 14).

SmartNoise built a new Laplace (or Gaussian) measurement for every value it noised; the
engine's mechanisms reuse one per scale. The noise must stay what the charge pays for.
"""

from __future__ import annotations

from typing import Any

import opendp.measurements
import pytest
import snsql.sql._mechanisms.gaussian as sn_gaussian
import snsql.sql._mechanisms.laplace as sn_laplace

from chalicelib.engines import smartnoise_engine as sn


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    built: list[Any] = []
    original = getattr(opendp.measurements, name)

    def make(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(opendp.measurements, name, make)
    module = sn_laplace if name == "make_laplace" else sn_gaussian
    monkeypatch.setattr(module, name, make)
    return built


@pytest.mark.parametrize(
    ("cls", "name", "kwargs"),
    [
        (sn.MemoLaplace, "make_laplace", {"lower": 0, "upper": 10}),
        (sn.MemoGaussian, "make_gaussian", {"lower": 0, "upper": 10, "delta": 1e-6}),
    ],
)
def test_a_mechanism_builds_its_measurement_once_for_many_releases(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, kwargs: dict[str, Any]
) -> None:
    mechanism = cls(0.731, max_contrib=1, **kwargs)  # a scale no other test uses
    built = _counting(monkeypatch, name)
    released = [mechanism.release([5.0, 6.0]) for _ in range(20)]
    assert len(built) <= 1
    assert all(
        len(values) == 2 and all(isinstance(v, float) for v in values) for values in released
    )
    # the other thread gets its own, also built once
    import threading

    thread = threading.Thread(target=lambda: [mechanism.release([1.0]) for _ in range(5)])
    thread.start()
    thread.join()
    assert len(built) <= 2


def test_a_reused_laplace_measurement_releases_noise_of_the_charged_scale() -> None:
    """2,000 releases of 0: the mean |noise| of Laplace(b) draws is b.

    |noise| / b is Exponential(1): by Chernoff's bound on a Gamma(2000) sum, P(mean > 1.15)
    <= exp(-2000 (0.15 - ln 1.15)) < 2e-9 and P(mean < 0.85) <= exp(-2000 (ln(1/0.85) - 0.15))
    < 2e-11: a wrong failure is below 1e-8. Noise of scale 0.8 b (an under-noised release)
    gives a mean |noise| near 0.8 b and fails.
    """
    mechanism = sn.MemoLaplace(0.5, lower=0, upper=1, max_contrib=1)
    scale = float(mechanism.scale)
    assert scale == pytest.approx(2.0, rel=1e-3)  # sensitivity 1 at epsilon 0.5
    released = mechanism.release([0.0] * 1000) + mechanism.release([0.0] * 1000)
    mean_abs = sum(abs(v) for v in released) / len(released)
    assert 0.85 * scale < mean_abs < 1.15 * scale
    assert len(set(released)) > 1900  # independent draws, not one repeated value
