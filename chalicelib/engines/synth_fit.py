"""The synthesizers' fits and samples (numpy, pandas, mbi/jax, snsynth): only the worker.

:mod:`synth_engine` checks and prices a request; this module encodes the selected columns
with the codes the metadata gives, fits MST, AIM or MWEM on the codes, samples
``nb_samples`` rows from the fitted model and decodes them back to the columns' types.

MST and AIM are McKenna et al.'s mechanisms as snsynth 1.0.8 runs them (its
``MSTSynthesizer.MST`` and ``AIMSynthesizer.AIM``, Apache-2.0, from private-pgm), restated
here with three changes: the domain is the metadata's (not the data's), MST's public total
is the metadata's ``rows`` (snsynth passes the exact row count to the estimator), and
every measurement's zCDP cost is recorded in a :class:`Ledger` whose sum is checked
against the budget after the fit. MWEM is snsynth's ``MWEMSynthesizer`` with its three
data-derived quantities (histogram dimensions from the data's min/max, the iteration
count and the initial histogram's total from the exact row count) replaced by the
metadata's; its own accountant's spend is checked against ε after the fit.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from chalicelib.engines.synth_engine import ColumnCode, SynthRequest, parse_condition
from chalicelib.wire_tables import frame_to_table

CONDITION_TRIES = 100  # snsynth's sample_conditional max_tries: rounds of nb_samples rows


class Ledger:
    """The zCDP cost of each measurement of a fit (ρ), added up."""

    def __init__(self) -> None:
        self.entries: list[float] = []

    def gaussian(self, sigma: float, sensitivity: float = 1.0) -> None:
        """A Gaussian measurement of L2 sensitivity ``sensitivity``: ρ = Δ²/(2σ²)."""
        self.entries.append(sensitivity**2 / (2.0 * sigma**2))

    def exponential(self, epsilon: float) -> None:
        """An exponential mechanism that is ε-DP: ε²/8-zCDP (bounded range)."""
        self.entries.append(epsilon**2 / 8.0)

    @property
    def rho(self) -> float:
        return math.fsum(self.entries)


def cdp_rho(epsilon: float, delta: float) -> float:
    """snsynth's ρ for (ε, δ): OpenDP's search for the Gaussian scale meeting (ε, δ)."""
    from snsynth.utils import cdp_rho as snsynth_cdp_rho

    return float(snsynth_cdp_rho(epsilon, delta))


def rho_to_epsilon(rho: float, delta: float) -> float:
    """The ε at ``delta`` of a ρ-zCDP release (OpenDP's conversion, the one cdp_rho inverts)."""
    import opendp.prelude as dp
    from opendp.measurements import make_gaussian
    from opendp.mod import enable_features

    enable_features("floating-point", "contrib")
    gauss = make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                          1.0 / math.sqrt(2.0 * rho))  # fmt: skip
    fixed = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gauss), delta=delta)
    return float(fixed.map(d_in=1.0)[0])  # type: ignore[no-untyped-call]


# -- encoding from the metadata --------------------------------------------------------------


def encode(frame: pd.DataFrame, codes: list[ColumnCode]) -> dict[str, np.ndarray]:
    """Each column's integer codes (a row-by-row function of the row and the metadata)."""
    out: dict[str, np.ndarray] = {}
    for code in codes:
        column = frame[code.name]
        missing = column.isna().to_numpy()
        if code.kind == "categorical":
            lookup = {value: index for index, value in enumerate(code.values)}
            if code.type == "string":
                lookup = {str(value): index for index, value in enumerate(code.values)}
                keys = column.astype(object).map(lambda v: None if v is None else str(v))
            else:
                keys = column.astype(object)
            mapped = keys.map(lambda v, table=lookup: table.get(v, -1) if v is not None else -1)
            values = mapped.to_numpy(dtype=np.int64)
        else:
            if code.type == "datetime":
                stamps = pd.to_datetime(column, errors="coerce")
                if getattr(stamps.dt, "tz", None) is not None:
                    stamps = stamps.dt.tz_convert(None)
                raw = (stamps - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
            else:
                raw = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
            width = (code.upper - code.lower) / code.bins
            with np.errstate(invalid="ignore"):
                index = np.floor((np.clip(raw, code.lower, code.upper) - code.lower) / width)
            values = np.clip(np.nan_to_num(index, nan=-1), -1, code.bins - 1).astype(np.int64)
            missing = missing | np.isnan(raw)
        # null (or a value outside the metadata's domain) -> the null code, or code 0
        null_code = code.size - 1 if code.nullable else 0
        values = np.where(missing | (values < 0), null_code, values)
        out[code.name] = values.astype(np.int64)
    return out


def decode(sampled: dict[str, np.ndarray], codes: list[ColumnCode]) -> pd.DataFrame:
    """Codes back to values: a category, or a value drawn uniformly within its bin."""
    rng = np.random.default_rng()
    columns: dict[str, Any] = {}
    for code in codes:
        index = np.asarray(sampled[code.name], dtype=np.int64)
        is_null = (index == code.size - 1) if code.nullable else np.zeros(index.size, bool)
        if code.kind == "categorical":
            values = np.array([*list(code.values), None], dtype=object)
            picked = values[np.where(is_null, len(code.values), index)]
            series = pd.Series(picked, dtype=object)
            if code.type == "boolean" and not code.nullable:
                series = series.astype(bool)
            elif code.type == "int" and not code.nullable:
                series = series.astype(np.int64)
            elif code.type == "float" and not code.nullable:
                series = series.astype(float)
        else:
            width = (code.upper - code.lower) / code.bins
            low = code.lower + np.clip(index, 0, code.bins - 1) * width
            drawn = np.minimum(low + rng.random(index.size) * width, code.upper)
            if code.type == "int":
                lows = np.ceil(low)
                highs = np.maximum(lows, np.minimum(np.floor(low + width), code.upper))
                drawn = lows + np.floor(rng.random(index.size) * (highs - lows + 1))
                drawn = np.minimum(drawn, highs)
                series = pd.Series(drawn.astype(np.int64), dtype="Int64")
            elif code.type == "datetime":
                stamps = [datetime.fromtimestamp(float(s), UTC).replace(tzinfo=None) for s in drawn]
                series = pd.Series(pd.to_datetime(stamps))
            else:
                series = pd.Series(drawn, dtype=float)
            if code.nullable:
                series = series.astype(object).where(~is_null, None)
        columns[code.name] = series
    return pd.DataFrame(columns)


# -- MST (McKenna et al. 2021, as snsynth 1.0.8 runs it) -------------------------------------


def _mst(
    data: Any, rho: float, total: float, params: dict[str, Any], ledger: Ledger,
    progress: Callable[[float], None],
) -> Callable[[int], dict[str, np.ndarray]]:  # fmt: skip
    from mbi import estimation, marginal_oracles
    from snsynth.mst.mst import MSTSynthesizer

    helper = MSTSynthesizer(epsilon=1.0, delta=1e-9)  # only its stateless helpers are used
    sigma = math.sqrt(3.0 / (2.0 * rho))
    cliques = [(col,) for col in data.domain]
    log1 = helper.measure(data, cliques, sigma)
    ledger.gaussian(sigma)  # the weights are normalised to L2 norm 1: one unit in all
    progress(0.1)
    data, log1, undo = helper.compress_domain(data, log1)
    selected = _mst_select(data, rho / 3.0, log1, total, int(params["select_iters"]), ledger)
    progress(0.4)
    log2 = helper.measure(data, selected, sigma)
    ledger.gaussian(sigma)
    iters = int(params["iters"])
    done = [0]

    def step(_: Any) -> None:
        done[0] += 1
        if done[0] % 50 == 0:
            progress(0.45 + 0.5 * done[0] / iters)

    model = estimation.mirror_descent(
        data.domain, log1 + log2, known_total=total, iters=iters,
        marginal_oracle=marginal_oracles.message_passing_stable, callback_fn=step,
    )  # fmt: skip

    def sample(rows: int) -> dict[str, np.ndarray]:
        out = undo(model.synthetic_data(rows=rows))
        return {col: np.asarray(out.df[col]) for col in out.domain.attrs}

    return sample


def _mst_select(
    data: Any, rho: float, log: list[Any], total: float, iters: int, ledger: Ledger
) -> list[tuple[str, ...]]:
    """snsynth's ``MSTSynthesizer.select``, its estimate using the public total."""
    import networkx as nx
    from disjoint_set import DisjointSet
    from mbi import estimation, marginal_oracles
    from scipy.special import logsumexp

    est = estimation.mirror_descent(
        data.domain, log, known_total=total, iters=iters,
        marginal_oracle=marginal_oracles.message_passing_stable,
    )  # fmt: skip
    weights = {}
    candidates = list(itertools.combinations(data.domain.attrs, 2))
    for a, b in candidates:
        xhat = est.project([a, b]).datavector()
        x = data.project([a, b]).datavector()
        weights[a, b] = np.linalg.norm(x - xhat, 1)
    tree = nx.Graph()
    tree.add_nodes_from(data.domain.attrs)
    ds: Any = DisjointSet()
    r = len(list(nx.connected_components(tree)))
    epsilon = math.sqrt(8 * rho / (r - 1))
    for _ in range(r - 1):
        candidates = [e for e in candidates if not ds.connected(*e)]
        wgts = np.array([weights[e] for e in candidates])
        scores = 0.5 * epsilon * wgts  # sensitivity 1, not monotonic
        probas = np.exp(scores - logsumexp(scores))
        edge = candidates[np.random.choice(wgts.size, p=probas)]
        ledger.exponential(epsilon)
        tree.add_edge(*edge)
        ds.union(*edge)
    return list(tree.edges)


# -- AIM (McKenna et al. 2022, as snsynth 1.0.8 runs it) -------------------------------------


def _aim(
    data: Any, rho: float, params: dict[str, Any], ledger: Ledger,
    progress: Callable[[float], None],
) -> Callable[[int], dict[str, np.ndarray]]:  # fmt: skip
    from mbi import LinearMeasurement, estimation, marginal_oracles
    from snsynth.aim.aim import AIMSynthesizer, compile_workload, filter_candidates
    from snsynth.utils import exponential_mechanism, gaussian_noise

    helper = AIMSynthesizer(epsilon=1.0, delta=1e-9)  # only its stateless helpers are used
    workload = helper.get_workload(
        data, degree=int(params["degree"]), max_cells=int(params["max_cells"]),
        num_marginals=params.get("num_marginals"),
    )  # fmt: skip
    iters = int(params["iters"])
    max_model_size = float(params["max_model_size"])
    rounds = int(params["rounds"])  # synth_engine fixes it (default 16 x columns)
    candidates = compile_workload(workload)
    answers = {cl: data.project(cl).datavector() for cl in candidates}
    oneway = [cl for cl in candidates if len(cl) == 1]
    sigma = math.sqrt(rounds / (2 * 0.9 * rho))
    epsilon = math.sqrt(8 * 0.1 * rho / rounds)
    measurements = []
    rho_used = len(oneway) * 0.5 / sigma**2
    for cl in oneway:
        x = np.asarray(data.project(cl).datavector())
        y = x + np.asarray(gaussian_noise(sigma, x.size))
        measurements.append(LinearMeasurement(y, cl, sigma))
        ledger.gaussian(sigma)

    def fit() -> Any:
        return estimation.mirror_descent(
            data.domain, measurements, iters=iters,
            marginal_oracle=marginal_oracles.message_passing_stable,
        )  # fmt: skip

    model = fit()
    progress(min(0.95, 0.05 + 0.9 * rho_used / rho))
    terminate = False
    while not terminate:
        if rho - rho_used < 2 * (0.5 / sigma**2 + 1.0 / 8 * epsilon**2):
            remaining = rho - rho_used  # the last round spends what is left, exactly
            sigma = math.sqrt(1 / (2 * 0.9 * remaining))
            epsilon = math.sqrt(8 * 0.1 * remaining)
            terminate = True
        rho_used += 1.0 / 8 * epsilon**2 + 0.5 / sigma**2
        size_limit = max_model_size * rho_used / rho
        small = filter_candidates(candidates, model, size_limit)
        errors, sensitivity = {}, {}
        for cl in small:
            wgt = small[cl]
            bias = math.sqrt(2 / math.pi) * sigma * model.domain.size(cl)
            xest = model.project(cl).datavector()
            errors[cl] = wgt * (np.linalg.norm(answers[cl] - xest, 1) - bias)
            sensitivity[cl] = abs(wgt)
        max_sensitivity = max(sensitivity.values())
        cl = exponential_mechanism(errors, epsilon, max_sensitivity)
        ledger.exponential(epsilon)
        n = data.domain.size(cl)
        x = np.asarray(data.project(cl).datavector())
        y = x + np.asarray(gaussian_noise(sigma, n))
        z = model.project(cl).datavector()
        measurements.append(LinearMeasurement(y, cl, sigma))
        ledger.gaussian(sigma)
        model = fit()
        w = model.project(cl).datavector()
        if np.linalg.norm(w - z, 1) <= sigma * math.sqrt(2 / math.pi) * n:
            sigma /= 2
            epsilon *= 2
        progress(min(0.95, 0.05 + 0.9 * rho_used / rho))
    model = fit()

    def sample(rows: int) -> dict[str, np.ndarray]:
        out = model.synthetic_data(rows=rows)
        return {col: np.asarray(out.df[col]) for col in data.domain.attrs}

    return sample


# -- MWEM (Hardt, Ligett and McSherry 2012, snsynth's) ---------------------------------------


def _mwem(
    encoded: dict[str, np.ndarray], codes: list[ColumnCode], epsilon: float, rows: int,
    params: dict[str, Any], progress: Callable[[float], None],
) -> tuple[Callable[[int], dict[str, np.ndarray]], float]:  # fmt: skip
    from snsynth.mwem import Histogram, MWEMSynthesizer
    from snsynth.transform.table import NoTransformer

    sizes = [code.size for code in codes]

    class MetadataMWEM(MWEMSynthesizer):  # type: ignore[misc]
        """MWEM whose histograms span the metadata's domain, total the public ``rows``."""

        def _histogram_from_data_attributes(self, data: Any, splits: Any = ()) -> list[Any]:
            histograms = []
            for split in splits:
                dims = [sizes[i] for i in split]
                for i in split:
                    self.mins_maxes[str(i)] = (0, sizes[i] - 1)
                    self.scale[str(i)] = 1
                hist, bins = np.histogramdd(data[:, split], bins=dims, range=[(0, d) for d in dims])
                histograms.append(Histogram(hist, dims, bins, split))
            return histograms

        def _initialize_a(self, histogram: Any, dimensions: Any) -> Any:
            return np.zeros_like(histogram) + rows / float(np.prod(dimensions))

        def _multiplicative_weights(self, synth_hist: Any, *args: Any) -> Any:
            progress(min(0.95, len(self.accountant) / (2.0 * total_steps)))
            updated = super()._multiplicative_weights(synth_hist, *args)
            # At a tiny ε the noisy measurements overflow the update (inf, NaN): keep what is
            # finite, or start again from the uniform histogram (post-processing of noise;
            # never a failure that would depend on the data).
            if not np.all(np.isfinite(updated)):
                updated = np.nan_to_num(updated, nan=0.0, posinf=0.0, neginf=0.0)
            if not updated.sum() > 0:
                updated = self._initialize_a(updated, updated.shape)
            return updated

    synth = MetadataMWEM(
        epsilon=epsilon,
        q_count=int(params["q_count"]),
        iterations=int(params["iterations"]),
        mult_weights_iterations=int(params["mult_weights_iterations"]),
        split_factor=int(params["split_factor"]),
        marginal_width=int(params["marginal_width"]),
        max_retries_exp_mechanism=int(params["max_retries_exp_mechanism"]),
    )
    total_steps = int(params["iterations"]) * math.ceil(len(codes) / int(params["split_factor"]))
    matrix = np.column_stack([encoded[code.name] for code in codes])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth.fit(matrix, transformer=NoTransformer())
    names = [code.name for code in codes]

    def sample(count: int) -> dict[str, np.ndarray]:
        out = np.asarray(synth.sample(count))
        return {name: out[:, i].astype(np.int64) for i, name in enumerate(names)}

    return sample, float(math.fsum(synth.accountant))


# -- the release -----------------------------------------------------------------------------


def synthesize(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    request: SynthRequest,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Fit the request's synthesizer and release ``nb_samples`` decoded rows (a table)."""
    report = progress or (lambda _fraction: None)
    codes = request.codes(metadata)
    encoded = encode(frame, codes)
    rows = int(metadata["rows"])
    params = request.params
    if request.synth_name == "mwem":
        sample, spent = _mwem(encoded, codes, request.epsilon, rows, params, report)
        if not spent <= request.epsilon * (1 + 1e-12):
            raise AssertionError("the synthesizer spent more than its budget")  # a bug: 500, fixed
    else:
        from mbi import Dataset, Domain

        domain = Domain([code.name for code in codes], [code.size for code in codes])
        data = Dataset(encoded, domain)
        rho = cdp_rho(request.epsilon, request.delta)
        ledger = Ledger()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if request.synth_name == "mst":
                sample = _mst(data, rho, float(rows), params, ledger, report)
            else:
                sample = _aim(data, rho, params, ledger, report)
        if not ledger.rho <= rho * (1 + 1e-9):
            raise AssertionError("the synthesizer spent more than its budget")  # a bug: 500, fixed
    rows_out = _draw(sample, codes, request)
    report(1.0)
    return frame_to_table(rows_out)


def _draw(
    sample: Callable[[int], dict[str, np.ndarray]], codes: list[ColumnCode], request: SynthRequest
) -> pd.DataFrame:
    """``nb_samples`` rows; with a condition, the rows meeting it (rejection sampling)."""
    wanted = request.nb_samples
    if request.condition is None:
        return decode(sample(wanted), codes)
    expression = parse_condition(request.condition)
    kept: list[pd.DataFrame] = []
    found = 0
    for _ in range(CONDITION_TRIES):
        batch = decode(sample(wanted), codes)
        mask = [bool(expression.evaluate(row)) for row in batch.to_dict(orient="records")]
        chosen = batch[mask]
        kept.append(chosen)
        found += len(chosen)
        if found >= wanted:
            break
    return pd.concat(kept, ignore_index=True).head(wanted)
