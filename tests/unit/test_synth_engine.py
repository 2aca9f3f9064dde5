"""SmartNoise-Synth: priced at the request's (ε, δ), always a job, noise of the charged scale.

MST, AIM and MWEM run on codes the metadata gives (never the data's bounds or categories);
the price is the request's (ε, δ) exactly, and what a fit spends (its measurements' zCDP ρ,
or MWEM's accountant) is that budget. The noise each fit adds is checked against the scale
the charge implies (a χ² test: an under-noised fit fails it), and the marginals of a
release are within a documented distance of the real ones. Refusals (GAN synthesizers,
unknown names, bad columns or sample counts, no grant) are 4xx before any read, nothing
debited.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader, coerce_types
from chalicelib.engines import synth_fit
from chalicelib.engines.synth_engine import ENGINE, MAX_SAMPLES
from chalicelib.errors import NeblinaError
from chalicelib.metadata import validate
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, exact_decimal, utcnow
from chalicelib.service import Accepted, Service
from chalicelib.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
META = validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
CSV = ROOT / "localstack/data/penguins.csv"
FRAME = coerce_types(pd.read_csv(CSV), META)
COLS = ["species", "island", "sex", "flipper_length_mm"]
GRANT = PrivacyCost(epsilon=50, delta="0.001")
FAST = {
    "mst": {"iters": 100, "select_iters": 50},
    "aim": {"iters": 60, "rounds": 4},
    "mwem": {"iterations": 10},
}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def body(synth: str = "mst", **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "engine": "smartnoise_synth",
        "synth_name": synth,
        "epsilon": 3.0,
        "select_cols": COLS,
        "synth_params": FAST.get(synth, {}),
        "nb_samples": 50,
    }
    if synth in ("mst", "aim"):
        request["delta"] = 1e-6
    return {**request, **extra}


class CountingLoader(DatasetLoader):
    """The real loader, counting reads of private rows."""

    reads = 0

    def load(self, dataset: Dataset) -> Any:
        CountingLoader.reads += 1
        return super().load(dataset)


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    for user in ("alice", "mallory"):
        s.put_user(User(user_id=user, created_at=utcnow()))
    s.put_dataset(Dataset("PENGUIN", str(CSV), META, utcnow()))
    s.create_grant("alice", "PENGUIN", GRANT)
    return s


@pytest.fixture
def service(store: MemoryStore) -> Service:
    settings = from_environ()
    CountingLoader.reads = 0
    return Service(store, settings, CountingLoader(settings))


def remaining(store: MemoryStore) -> PrivacyCost:
    grant = store.get_grant("alice", "PENGUIN")
    assert grant is not None
    return grant.remaining


def synthesize(request_body: dict[str, Any], frame: pd.DataFrame = FRAME) -> pd.DataFrame:
    request = ENGINE.parse(request_body).check(META)
    out = synth_fit.synthesize(frame, META, request)
    assert out["type"] == "table"
    return pd.DataFrame(out["records"], columns=out["columns"])


# -- price ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("synth", "extra", "epsilon", "delta"),
    [
        ("mst", {"epsilon": 0.1, "delta": 1e-7}, 0.1, 1e-7),
        ("aim", {"epsilon": 2.5, "delta": None}, 2.5, 1e-9),  # snsynth's (and Lomas's) default
        ("mwem", {"epsilon": 0.3}, 0.3, 0.0),
        ("mwem", {"epsilon": 0.3, "delta": 0}, 0.3, 0.0),
    ],
)
def test_the_price_is_the_requests_epsilon_and_delta_exactly(
    service: Service, synth: str, extra: dict[str, Any], epsilon: float, delta: float
) -> None:
    quoted = service.cost("alice", "PENGUIN", body(synth, **extra))
    exact = PrivacyCost(epsilon=exact_decimal(epsilon), delta=exact_decimal(delta))
    assert quoted["cost"] == exact.charged().to_json()
    assert CountingLoader.reads == 0  # priced from the request and the metadata only


@dataclass
class Fit:
    """One fit shared by several tests (module scope: each MST/AIM fit costs seconds)."""

    epsilon: float
    delta: float
    rows: pd.DataFrame
    ledger: synth_fit.Ledger
    progress: list[float]


def recorded_fit(request_body: dict[str, Any]) -> Fit:
    """Fit once, recording the ledger of its measurements and its progress reports."""
    ledgers: list[synth_fit.Ledger] = []

    class Recording(synth_fit.Ledger):
        def __init__(self) -> None:
            super().__init__()
            ledgers.append(self)

    fractions: list[float] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synth_fit, "Ledger", Recording)
        request = ENGINE.parse(request_body).check(META)
        out = synth_fit.synthesize(FRAME, META, request, fractions.append)
    (ledger,) = ledgers
    rows = pd.DataFrame(out["records"], columns=out["columns"])
    return Fit(request.epsilon, request.delta, rows, ledger, fractions)


@pytest.fixture(scope="module")
def mst_fits() -> list[Fit]:
    """Two MST fits at ε = 3 (the utility check's), whose ledgers the spend test reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [recorded_fit(body("mst", nb_samples=2000)) for _ in range(2)]


@pytest.fixture(scope="module")
def aim_fit() -> Fit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return recorded_fit(body("aim", epsilon=1.0, delta=1e-5))


@pytest.mark.parametrize("synth", ["mst", "aim"])
def test_mst_and_aim_spend_exactly_the_rho_of_the_charged_epsilon_and_delta(
    request: pytest.FixtureRequest, synth: str
) -> None:
    """The fit's measurements add up to ρ = cdp_rho(ε, δ), whose (ε, δ) is the charge."""
    fits = request.getfixturevalue("mst_fits") if synth == "mst" else [aim_fit_of(request)]
    for fit in fits:
        rho = synth_fit.cdp_rho(fit.epsilon, fit.delta)
        assert len(fit.ledger.entries) >= 3
        assert math.isclose(fit.ledger.rho, rho, rel_tol=1e-9)
        spent = synth_fit.rho_to_epsilon(fit.ledger.rho, fit.delta)
        assert fit.epsilon * (1 - 1e-6) <= spent <= fit.epsilon * (1 + 1e-9), spent


def aim_fit_of(request: pytest.FixtureRequest) -> Fit:
    fit: Fit = request.getfixturevalue("aim_fit")
    return fit


def test_mwems_accountant_spends_exactly_epsilon() -> None:
    request = ENGINE.parse(body("mwem", epsilon=0.7)).check(META)
    codes = request.codes(META)
    _, spent = synth_fit._mwem(
        synth_fit.encode(FRAME, codes), codes, 0.7, 344, request.params, lambda _f: None
    )
    assert math.isclose(spent, 0.7, rel_tol=1e-12)


# -- noise of the charged scale (with power) ------------------------------------------------


class Measured(Exception):
    """Stops a fit once its one-way measurements are drawn (the rest is not needed here)."""


@pytest.fixture
def one_way_noise(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, np.ndarray]]:
    """The Gaussian draws of a fit's one-way measurements: (scale drawn at, draws); the fit
    is stopped after them."""
    import snsynth.mst.mst as mst_module
    import snsynth.utils as utils

    draws: list[tuple[float, np.ndarray]] = []
    original = utils.gaussian_noise
    wanted = len(NOISE_COLS)

    def recording(sigma: float, size: int | None = None) -> Any:
        values = original(sigma, size)
        draws.append((float(sigma), np.atleast_1d(np.asarray(values, dtype=float))))
        if len(draws) == wanted or ((size or 1) > 100 and len(draws) == 1):
            raise Measured
        return values

    monkeypatch.setattr(utils, "gaussian_noise", recording)
    monkeypatch.setattr(mst_module, "gaussian_noise", recording)
    return draws


# every column of PENGUIN, 64 bins: 3+3+4·(64+null)+(2+null)+3 years = 272 one-way cells
NOISE_COLS = list(META["columns"])
NOISE_CELLS = 272


def chi_square_ok(z: np.ndarray) -> bool:
    """Σz² of N standard normals is within 7·sqrt(2N) of N. For N = 272 a Chernoff bound
    on the χ² tails puts a false failure below 1e-8; half the noise (Σz² ≈ N/4, 206 below
    N) or twice the noise (≈ 4N) is far outside (7·sqrt(2N) ≈ 164)."""
    n = z.size
    return bool(abs(float(np.sum(z**2)) - n) <= 7 * math.sqrt(2 * n))


@pytest.mark.parametrize("synth", ["mst", "aim"])
def test_the_one_way_measurements_carry_gaussian_noise_of_the_charged_scale(
    one_way_noise: list[tuple[float, np.ndarray]], synth: str
) -> None:
    epsilon, delta, rounds = 0.5, 1e-6, 10
    params = {"bins": 64, **({"rounds": rounds} if synth == "aim" else {})}
    with pytest.raises(Measured):
        synthesize(body(synth, epsilon=epsilon, delta=delta, select_cols=NOISE_COLS,
                        synth_params=params))  # fmt: skip
    rho = synth_fit.cdp_rho(epsilon, delta)  # from the charge, independently of the fit
    d = len(NOISE_COLS)
    if synth == "mst":  # ρ/3 on the d one-way marginals, weights 1/sqrt(d)
        scale = math.sqrt(3 / (2 * rho)) * math.sqrt(d)
    else:  # AIM: 90 % of ρ over `rounds` measurements, the one-way ones first
        scale = math.sqrt(rounds / (2 * 0.9 * rho))
    assert {round(s, 9) for s, _ in one_way_noise} == {round(scale, 9)}
    z = np.concatenate([v for _, v in one_way_noise]) / scale
    assert z.size == NOISE_CELLS
    assert chi_square_ok(z)
    assert not chi_square_ok(z / 2)  # an under-noised fit (half the scale) fails
    assert not chi_square_ok(z * 2)


def test_mwems_laplace_measurements_carry_noise_of_the_charged_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from snsynth.mwem import MWEMSynthesizer

    draws: list[tuple[float, float]] = []
    original = MWEMSynthesizer._laplace

    def recording(self: Any, scale: float) -> Any:
        value = original(self, scale)
        draws.append((float(scale), float(value)))
        return value

    monkeypatch.setattr(MWEMSynthesizer, "_laplace", recording)
    epsilon, iterations = 1.0, 30
    synthesize(body("mwem", epsilon=epsilon, synth_params={"iterations": iterations}))
    # one histogram (split_factor = every column): ε/2 per iteration for the measurement
    scale = 1 / (epsilon / 2 / iterations)
    assert {round(s, 9) for s, _ in draws} == {round(scale, 9)}
    # |Laplace(b)|/b is Exponential(1): Σ over N has mean N, sd sqrt(N)
    e = np.array([abs(v) / scale for _, v in draws])
    n = e.size
    assert n >= 100

    def ok(x: np.ndarray) -> bool:
        return abs(float(x.sum()) - n) <= 7 * math.sqrt(n)

    assert ok(e) and not ok(e / 2)


# -- utility --------------------------------------------------------------------------------


def total_variation(real: pd.DataFrame, synthetic: pd.DataFrame, columns: list[str]) -> float:
    p = real.groupby(columns).size() / len(real)
    q = synthetic.groupby(columns).size() / len(synthetic)
    return float(0.5 * p.sub(q, fill_value=0).abs().sum())


def test_msts_one_and_two_way_marginals_at_epsilon_3_are_close_to_the_real_ones(
    mst_fits: list[Fit],
) -> None:
    """Documented bounds (docs/synth.md): one-way TV ≤ 0.15, two-way TV ≤ 0.40, two runs."""
    request = ENGINE.parse(body("mst", nb_samples=2000)).check(META)
    codes = request.codes(META)
    real = pd.DataFrame(synth_fit.encode(FRAME, codes))
    for fit in mst_fits:
        synthetic = fit.rows
        assert len(synthetic) == 2000
        coded = pd.DataFrame(synth_fit.encode(synthetic, codes))
        for column in COLS:
            assert total_variation(real, coded, [column]) <= 0.15, column
        for pair in itertools.combinations(COLS, 2):
            assert total_variation(real, coded, list(pair)) <= 0.40, pair


# -- the release ----------------------------------------------------------------------------


def test_a_release_has_the_selected_columns_types_and_the_metadatas_domain() -> None:
    out = synthesize(body("mwem", select_cols=[*COLS, "study_year"], nb_samples=300))
    assert list(out.columns) == [*COLS, "study_year"] and len(out) == 300
    assert set(out["species"]) <= set(META["columns"]["species"]["categories"])
    assert set(out["sex"].dropna()) <= {"female", "male"}
    flipper = out["flipper_length_mm"].dropna()
    assert ((flipper >= 150) & (flipper <= 250)).all()
    assert set(out["study_year"]) <= {2007, 2008, 2009}


def test_the_domain_comes_from_the_metadata_not_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A category declared but absent from the data, and bounds wider than the data: the
    synthesizer's domain is the metadata's (snsynth's own transformers would shrink both)."""
    only_adelie = FRAME[(FRAME["species"] == "Adelie") & (FRAME["flipper_length_mm"] < 200)]
    request = ENGINE.parse(body("mst")).check(META)
    codes = {c.name: c for c in request.codes(META)}
    assert codes["species"].values == ("Adelie", "Chinstrap", "Gentoo")
    assert (codes["flipper_length_mm"].lower, codes["flipper_length_mm"].upper) == (150, 250)
    seen: list[tuple[int, ...]] = []
    original = synth_fit._mst

    def recording(data: Any, *args: Any) -> Any:
        seen.append(tuple(data.domain.shape))
        return original(data, *args)

    import mbi.estimation

    totals: list[object] = []
    mirror_descent = mbi.estimation.mirror_descent

    def recording_total(*args: Any, **kwargs: Any) -> Any:
        totals.append(kwargs.get("known_total"))
        return mirror_descent(*args, **kwargs)

    monkeypatch.setattr(synth_fit, "_mst", recording)
    monkeypatch.setattr(mbi.estimation, "mirror_descent", recording_total)
    fast = {"iters": 30, "select_iters": 20}
    synthesize(body("mst", synth_params=fast), only_adelie)
    # species 3, island 3, sex 2 + null, flipper 10 bins + null: the same on any data
    assert seen == [(3, 3, 3, 11)]
    # MST's estimates use the metadata's public row count, never the data's (snsynth's)
    assert len(only_adelie) < 344 and totals == [344.0, 344.0]


def test_datetime_and_boolean_columns_are_synthesized_within_their_metadata() -> None:
    meta = validate(
        {
            "max_ids": 1, "rows": 200, "row_privacy": True, "censor_dims": False,
            "columns": {
                "seen": {"type": "datetime", "lower": "2020-01-01", "upper": "2020-12-31"},
                "flag": {"type": "boolean", "nullable": True},
                "kind": {"type": "string", "categories": ["a", "b"]},
            },
        }
    )  # fmt: skip
    rng = np.random.default_rng(1)
    raw = pd.DataFrame(
        {
            "seen": pd.to_datetime("2020-01-01")
            + pd.to_timedelta(rng.integers(0, 360, 200), unit="D"),
            "flag": rng.choice([True, False], 200),
            "kind": rng.choice(["a", "b"], 200),
        }
    )
    frame = coerce_types(raw, meta)
    request = ENGINE.parse(
        {"engine": "smartnoise_synth", "synth_name": "mwem", "epsilon": 2.0,
         "synth_params": {"iterations": 10}, "nb_samples": 100}
    ).check(meta)  # fmt: skip
    out = synth_fit.synthesize(frame, meta, request)
    released = pd.DataFrame(out["records"], columns=out["columns"])
    seen = pd.to_datetime(released["seen"])
    assert ((seen >= "2020-01-01") & (seen <= "2020-12-31")).all()
    assert set(released["flag"].dropna()) <= {True, False}
    assert set(released["kind"]) <= {"a", "b"}


def test_conditional_sampling_returns_only_rows_meeting_the_condition() -> None:
    out = synthesize(body("mwem", nb_samples=40, condition="island = 'Dream'"))
    assert 0 < len(out) <= 40
    assert set(out["island"]) == {"Dream"}


# -- jobs, dummy runs -----------------------------------------------------------------------


def test_a_synthesis_is_always_a_job_debited_once_and_done_with_its_rows(
    service: Service, store: MemoryStore
) -> None:
    answer = service.query("alice", "PENGUIN", body("mwem", query_id="synth-job-0001"))
    assert isinstance(answer, Accepted)  # "wait" defaults to true: still a job (202)
    assert answer.body["state"] == "running"
    service.workers.join(timeout=120)  # type: ignore[attr-defined]
    charged = PrivacyCost(epsilon=exact_decimal(3.0), delta=0).charged()
    assert remaining(store) == GRANT - charged
    record = store.get_query("synth-job-0001")
    assert record is not None and record.state is QueryState.DONE
    result = service.get_query("alice", "PENGUIN", "synth-job-0001")["result"]
    assert result["type"] == "table" and len(result["records"]) == 50
    assert CountingLoader.reads == 1


def test_a_dummy_synthesis_is_free_and_answered_at_once(
    service: Service, store: MemoryStore
) -> None:
    answer = service.query(
        "alice", "PENGUIN", body("mwem", dummy=True, dummy_rows=100, query_id="synth-dummy-1")
    )
    assert not isinstance(answer, Accepted)
    assert answer["result"]["type"] == "table" and len(answer["result"]["records"]) == 50
    assert remaining(store) == GRANT
    assert CountingLoader.reads == 0


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "status", "code"),
    [
        (body("dpctgan"), 400, "unsupported_synthesizer"),
        (body("patectgan"), 400, "unsupported_synthesizer"),
        (body("pategan"), 400, "unsupported_synthesizer"),
        (body("dpgan"), 400, "unsupported_synthesizer"),
        (body("pacsynth"), 400, "unsupported_synthesizer"),
        (body("ctgan"), 400, "unsupported_synthesizer"),
        ({**body(), "synth_name": None}, 400, "invalid_request"),
        (body(select_cols=["species", "no_such_column"]), 400, "invalid_query"),
        (body(select_cols="species"), 400, "invalid_request"),
        (body(select_cols=["species", "species"]), 400, "invalid_request"),
        (body(select_cols=["species"]), 400, "invalid_query"),  # MST needs two columns
        (body(nb_samples=0), 400, "invalid_query"),
        (body(nb_samples=MAX_SAMPLES + 1), 400, "invalid_query"),
        (body(nb_samples="10"), 400, "invalid_query"),
        (body(nb_samples=True), 400, "invalid_query"),
        (body(nb_samples=2.5), 400, "invalid_query"),
        (body(return_model=True), 400, "invalid_query"),
        (body("mwem", delta=1e-6), 400, "invalid_query"),
        (body(delta=0), 400, "invalid_request"),  # MST and AIM need δ > 0
        (body(epsilon=0), 400, "invalid_request"),
        (body(synth_params={"verbose": True}), 400, "invalid_query"),
        (body(synth_params={"iters": "__import__('os')"}), 400, "invalid_query"),
        (body(synth_params={"iters": 10**9}), 400, "invalid_query"),
        (body(synth_params=[1]), 400, "invalid_query"),
        (body(constraints="{}"), 400, "invalid_request"),
        (body(condition="no_such = 1"), 400, "invalid_query"),
        (body(condition="island = 'Dream' AND"), 400, "invalid_query"),
        (body("mwem", select_cols=None, synth_params={"split_factor": 8, "bins": 64}), 400,
         "invalid_query"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_before_any_read_with_nothing_debited(
    service: Service, store: MemoryStore, request_body: dict[str, Any], status: int, code: str
) -> None:
    for call in (service.cost, service.query):
        with pytest.raises(NeblinaError) as caught:
            call("alice", "PENGUIN", {**request_body, "query_id": "synth-refused-1"})
        assert (caught.value.status_code, caught.value.code) == (status, code)
    assert remaining(store) == GRANT and CountingLoader.reads == 0
    assert store.get_query("synth-refused-1") is None


def test_the_gan_refusal_names_the_supported_synthesizers(service: Service) -> None:
    with pytest.raises(NeblinaError) as caught:
        service.cost("alice", "PENGUIN", body("dpctgan"))
    assert "torch" in caught.value.message and "mst, aim, mwem" in caught.value.message


def test_a_user_without_a_grant_is_refused_before_anything_runs(
    service: Service, store: MemoryStore
) -> None:
    with pytest.raises(NeblinaError) as caught:
        service.query("mallory", "PENGUIN", body("mst", query_id="synth-nogrant-1"))
    assert (caught.value.status_code, caught.value.code) == (403, "no_grant")
    assert CountingLoader.reads == 0 and store.get_query("synth-nogrant-1") is None


def test_a_dataset_with_several_rows_per_individual_is_refused(service: Service) -> None:
    meta = validate({**yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())})
    meta = {**meta, "row_privacy": False}
    dataset = Dataset("MULTI", str(CSV), meta, utcnow())
    with pytest.raises(NeblinaError) as caught:
        ENGINE.cost(dataset, ENGINE.parse(body()))
    assert caught.value.code == "invalid_query"


def test_a_string_column_without_categories_is_refused_not_learned_from_the_data() -> None:
    meta = {**META, "columns": {**META["columns"], "island": {"type": "string"}}}
    dataset = Dataset("FREE_TEXT", str(CSV), meta, utcnow())
    with pytest.raises(NeblinaError) as caught:
        ENGINE.cost(dataset, ENGINE.parse(body()))
    assert caught.value.code == "invalid_query" and "categories" in caught.value.message


@pytest.mark.parametrize("synth", ["mwem", "aim"])
def test_a_fit_reports_its_progress_rising_to_one(
    request: pytest.FixtureRequest, synth: str
) -> None:
    if synth == "aim":
        fractions = aim_fit_of(request).progress
    else:
        fractions = []
        checked = ENGINE.parse(body(synth, epsilon=1.0)).check(META)
        synth_fit.synthesize(FRAME, META, checked, fractions.append)
    assert len(fractions) >= 3 and fractions[-1] == 1.0
    assert all(0 <= f <= 1 for f in fractions) and fractions == sorted(fractions)


# -- work bounds: what cannot finish within the worker's timeout is refused before the debit --


@pytest.mark.parametrize(
    "request_body",
    [
        body("aim", synth_params={"rounds": 100, "iters": 1000}),  # 102,000 iterations
        body("aim", select_cols=None, synth_params={"iters": 1000}),  # 130 default rounds
        body("mwem", select_cols=None, synth_params={"split_factor": 8, "iterations": 100}),
    ],
)
def test_a_fit_too_long_for_the_worker_is_refused_before_any_read_with_nothing_debited(
    service: Service, store: MemoryStore, request_body: dict[str, Any]
) -> None:
    for call in (service.cost, service.query):
        with pytest.raises(NeblinaError) as caught:
            call("alice", "PENGUIN", {**request_body, "query_id": "synth-long-1"})
        assert (caught.value.status_code, caught.value.code) == (400, "invalid_query")
        assert "outlive the worker" in caught.value.message
    assert remaining(store) == GRANT and CountingLoader.reads == 0
    assert store.get_query("synth-long-1") is None


def test_the_work_bound_depends_on_public_inputs_only_never_the_rows() -> None:
    # The same request against the same metadata gets the same answer whatever the rows:
    # the check never sees a frame (it takes the metadata alone), so empty or doubled
    # data cannot change it; only the metadata's domain sizes and the request do.
    from chalicelib.engines import synth_engine

    long_aim = ENGINE.parse(body("aim", synth_params={"rounds": 100, "iters": 1000}))
    for rows in (1, 344, 10_000_000):
        with pytest.raises(NeblinaError):
            long_aim.check({**META, "rows": rows})
    short_aim = ENGINE.parse(body("aim", synth_params={"rounds": 100, "iters": 190}))
    for rows in (1, 344, 10_000_000):
        assert short_aim.check({**META, "rows": rows}).params["iters"] == 190
    assert synth_engine.MAX_AIM_WORK * 0.021 < 900 / 2  # 21 ms an iteration under load


@pytest.mark.parametrize("columns", [COLS, None])
def test_the_default_aim_and_mwem_fits_are_within_the_work_bounds(
    columns: list[str] | None,
) -> None:
    from chalicelib.engines import synth_engine

    for synth in ("aim", "mwem"):
        params = ENGINE.parse(body(synth, select_cols=columns, synth_params={})).check(META).params
        if synth == "aim":
            work = (params["rounds"] + 2) * params["iters"]
            assert work <= synth_engine.DEFAULT_AIM_WORK and params["iters"] >= 10
        else:
            assert params["split_factor"] == len(columns or META["columns"])  # snsynth: one split


@pytest.mark.parametrize(
    "synth_params", [{"iters": 5000, "select_iters": 1000}, {"iters": 1000, "select_iters": 100}]
)
def test_a_dummy_run_too_long_for_the_request_is_refused_while_the_real_fit_is_accepted(
    service: Service, store: MemoryStore, synth_params: dict[str, int]
) -> None:
    # A dummy run is answered within the request (API Gateway: 29 s), so its work is
    # bounded far below a job's; the same request without dummy is priced (a job).
    trial = body("mst", synth_params=synth_params, dummy=True, query_id="synth-dummy-long")
    with pytest.raises(NeblinaError) as caught:
        service.query("alice", "PENGUIN", trial)
    assert (caught.value.status_code, caught.value.code) == (400, "invalid_query")
    assert "dummy run" in caught.value.message
    assert remaining(store) == GRANT and CountingLoader.reads == 0
    real = {key: value for key, value in trial.items() if key not in ("dummy", "query_id")}
    assert service.cost("alice", "PENGUIN", real) is not None
