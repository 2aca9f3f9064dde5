"""The HTTP client: one method per route of the v1 API, with retries."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx
import pandas as pd

from ._config import load_settings
from ._decode import (
    parse_archived_query,
    parse_budget,
    parse_cost,
    parse_dataset,
    parse_query_result,
    parse_stated_accuracy,
)
from ._decode import parse_response as _parse
from ._diffprivlib import pipeline_steps, rebuild, step_names
from ._exceptions import (
    NeblinaConnectionError,
    NeblinaError,
    QueryInProgressError,
    error_for_status,
)
from ._jobs import Job, JobHandle
from ._opendp import input_space, pipeline_nodes
from ._polars import PolarsContext
from ._retry import Backoff, is_retryable, parse_retry_after
from ._synth import Synth
from ._tables import decode_table
from ._types import ArchivedQuery, Budget, Cost, DatasetInfo, History, QueryResult
from ._version import __version__

# What a caller may pass as ε or δ. A float goes out as a JSON number (its shortest repr,
# so 0.1 is sent as 0.1), a Decimal or str as a decimal string, so nothing is rounded.
Amount = float | int | str | Decimal

SMARTNOISE_SQL = "smartnoise_sql"
OPENDP = "opendp"
DIFFPRIVLIB = "diffprivlib"
HISTORY_PAGE_SIZE = 100  # the server's maximum
# Errors that answer a ``wait=False`` submission: the query already runs under this id.
_ATTACH_CODES = frozenset({"query_in_progress"})


class Client:
    """A connection to a Neblina server, working on one dataset.

    ``url``, ``token`` and ``dataset`` default to ``NEBLINA_URL``, ``NEBLINA_TOKEN`` and
    ``NEBLINA_DATASET`` from the environment, then from ``.neblina/local.env`` in the
    current directory or a parent; the dataset finally defaults to ``PENGUIN``.

    Failed requests are retried ``max_retries`` times (connection errors, timeouts, 5xx,
    429 and ``query_in_progress``), waiting ``backoff.delay(...)`` seconds between tries
    (exponential with jitter; a 429's ``Retry-After`` wins, up to a cap) through ``sleep``.
    Every retry of a query carries the same ``query_id``, so the server charges it at most
    once. Waiting on a query that runs as a job (:class:`Job`) polls with the same
    ``backoff`` and ``sleep``, timed by ``clock``.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        dataset: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        settings = load_settings(url, token, dataset)
        self.url = settings.url
        self.dataset = settings.dataset
        self.max_retries = max_retries
        self.sql = SQL(self)
        self.opendp = OpenDP(self)
        self.diffprivlib = DiffPrivLib(self)
        self.synth = Synth(self)
        self._token = settings.token
        self._backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=settings.url,
            headers={
                "Authorization": f"Bearer {settings.token}",
                "Accept": "application/json",
                "User-Agent": f"neblina-client/{__version__}",
            },
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, dataset={self.dataset!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def datasets(self) -> list[DatasetInfo]:
        """The datasets the caller holds a grant on."""
        body = self._request("GET", "/v1/datasets")
        return _parse(lambda b: [parse_dataset(item) for item in b["datasets"]], body)

    def metadata(self) -> dict[str, Any]:
        """The dataset's public metadata (Lomas format)."""
        body = self._request("GET", self._dataset_path("metadata"))
        return _parse(lambda b: dict(b["metadata"]), body)

    def dummy(self, rows: int = 100, seed: int = 42) -> pd.DataFrame:
        """Fake rows with the dataset's schema, generated from the metadata only (free)."""
        body = self._request(
            "GET", self._dataset_path("dummy"), params={"rows": rows, "seed": seed}
        )
        return _parse(lambda b: decode_table(b["table"]), body)

    def budget(self) -> Budget:
        """The caller's grant on the dataset: initial, spent and remaining."""
        body = self._request("GET", self._dataset_path("budget"))
        return _parse(parse_budget, body)

    def history(self, limit: int | None = None) -> History:
        """The caller's archived queries on the dataset, newest first (at most ``limit``):
        a list, with ``.plot(budget=...)`` for a burn-down chart."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        queries: list[ArchivedQuery] = []
        cursor: str | None = None
        while limit is None or len(queries) < limit:
            wanted = HISTORY_PAGE_SIZE if limit is None else limit - len(queries)
            params: dict[str, Any] = {"limit": min(wanted, HISTORY_PAGE_SIZE)}
            if cursor is not None:
                params["cursor"] = cursor
            body = self._request("GET", self._dataset_path("queries"), params=params)
            page = _parse(lambda b: [parse_archived_query(item) for item in b["queries"]], body)
            next_cursor = body.get("next_cursor")
            queries.extend(page)
            if next_cursor is None:
                break
            if next_cursor == cursor:
                raise NeblinaError("the server repeated a page cursor", code="invalid_response")
            cursor = str(next_cursor)
        return History(queries[:limit])

    def result(self, query_id: str) -> ArchivedQuery:
        """One archived query, with its released result."""
        return _parse(parse_archived_query, self._query_record(self.dataset, query_id))

    def job(self, query_id: str, dataset: str | None = None) -> Job:
        """A handle on a query submitted earlier (``wait=False``), e.g. before a restart.

        ``dataset`` defaults to the client's. Nothing is sent until ``status()`` or
        ``wait()``; an unknown id then raises :class:`NotFoundError`.
        """
        if not isinstance(query_id, str) or not query_id:
            raise ValueError(f"query_id must be a non-empty string, got {query_id!r}")
        return Job(self, query_id, self.dataset if dataset is None else dataset)

    def plan(self, queries: list[Any], level: float | None = None) -> pd.DataFrame:
        """Price a workload (free, reads no data): one row per query, in order.

        Each query is a request body as for the cost route (``{"engine": "smartnoise_sql",
        "query": ..., "epsilon": ..., "delta": ...}``) or an object with a ``body()``
        method (an OpenDP Polars query). Columns: ``engine``, ``epsilon``, ``delta``
        (Decimals), ``within_query_cap``, ``accuracy`` (a DataFrame per query, as
        ``Cost.accuracy``). ``attrs``: ``total`` (a :class:`Cost`, the exact sum),
        ``fits`` (``grant``, ``cap``, ``query_cap``, ``all``), ``remaining``, ``level``.
        """
        bodies = [dict(q.body()) if hasattr(q, "body") else dict(q) for q in queries]
        payload: dict[str, Any] = {"queries": bodies}
        if level is not None:
            payload["level"] = level
        answer = self._request("POST", self._dataset_path("plan"), json=payload)

        def decode(data: Mapping[str, Any]) -> pd.DataFrame:
            rows = []
            for item in data["queries"]:
                cost = parse_cost(item["cost"])
                rows.append(
                    {
                        "engine": str(item["engine"]),
                        "epsilon": cost.epsilon,
                        "delta": cost.delta,
                        "within_query_cap": bool(item["within_query_cap"]),
                        "accuracy": parse_stated_accuracy(item.get("accuracy")),
                    }
                )
            columns = ["engine", "epsilon", "delta", "within_query_cap", "accuracy"]
            frame = pd.DataFrame(rows, columns=columns)
            frame.attrs["total"] = parse_cost(data["total"])
            frame.attrs["fits"] = dict(data["fits"])
            frame.attrs["remaining"] = parse_cost(data["remaining"])
            frame.attrs["level"] = data.get("level")
            return frame

        return _parse(decode, answer)

    def _query_record(self, dataset: str, query_id: str) -> Any:
        """The body of ``GET .../queries/{query_id}`` on ``dataset``."""
        return self._request("GET", self._dataset_path("queries", query_id, dataset=dataset))

    _parse_response = staticmethod(_parse)

    def _price(self, body: dict[str, Any]) -> Cost:
        """The cost of the query in ``body`` (one engine's request fields); debits nothing."""
        response = self._request("POST", self._dataset_path("cost"), json=body)

        def priced(answer: Mapping[str, Any]) -> Cost:
            cost = parse_cost(answer["cost"])
            return replace(cost, accuracy=parse_stated_accuracy(answer.get("accuracy")))

        return _parse(priced, response)

    def _submit(
        self,
        body: dict[str, Any],
        *,
        query_id: str | None,
        dummy: bool,
        dummy_rows: int,
        dummy_seed: int,
        wait: bool,
    ) -> QueryResult | Job:
        """Run the query in ``body`` (one engine's request fields): the one submission path.

        The query is sent with ``query_id`` (a new UUID unless given); every retry resends the
        same id and payload, so the server charges it at most once. Errors carry the id.

        A ``202`` means the server runs the query as a job: with ``wait`` (the default) it is
        waited on (:meth:`Job.wait`), else its :class:`Job` is returned. ``wait=False`` is
        sent as ``"wait": false``; a ``200`` to it (a dummy run, a replay) gives a Job that
        already holds its answer, and ``query_in_progress`` (a resend of a submission whose
        answer was lost) the Job of the query already running under that id.
        """
        query_id = query_id if query_id is not None else uuid.uuid4().hex
        body = {**body, "query_id": query_id, "dummy": dummy}
        if dummy:
            body.update(dummy_rows=dummy_rows, dummy_seed=dummy_seed)
        if not wait:
            body["wait"] = False
        dataset = self.dataset
        try:
            response = self._send(
                "POST",
                self._dataset_path("queries", dataset=dataset),
                json=body,
                final_codes=frozenset() if wait else _ATTACH_CODES,
            )
            if response.status_code == 202:
                job = Job(self, query_id, dataset)
            else:
                answer = _parse(parse_query_result, self._json(response))
                job = Job(self, query_id, dataset, answer=answer)
        except QueryInProgressError as error:
            if wait:
                error.query_id = query_id
                raise
            return Job(self, query_id, dataset)
        except NeblinaError as error:
            error.query_id = query_id
            raise
        return job.wait() if wait else job

    def _dataset_path(self, *parts: str, dataset: str | None = None) -> str:
        segments = ("v1", "datasets", self.dataset if dataset is None else dataset, *parts)
        return "/" + "/".join(quote(segment, safe="") for segment in segments)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send a request, retrying what may succeed later; the decoded JSON body."""
        return self._json(self._send(method, path, params=params, json=json))

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
        final_codes: frozenset[str] = frozenset(),
    ) -> httpx.Response:
        """Send a request, retrying what may succeed later; the successful response.

        An error whose code is in ``final_codes`` is raised at once, never retried.
        """
        for retry in range(self.max_retries + 1):
            last = retry == self.max_retries
            try:
                response = self._http.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                if last:
                    raise NeblinaConnectionError(
                        self._scrub(f"{method} {path} failed: {type(exc).__name__}: {exc}")
                    ) from exc
                self._sleep(self._backoff.delay(retry))
                continue
            if response.is_success:
                return response
            error = self._error(response)
            if (
                last
                or error.code in final_codes
                or not is_retryable(response.status_code, error.code)
            ):
                raise error
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self._sleep(self._backoff.delay(retry, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise NeblinaError(
                f"expected a JSON body, got {_snippet(response)!r}",
                status_code=response.status_code,
                code="invalid_response",
            ) from None

    def _error(self, response: httpx.Response) -> NeblinaError:
        """The exception for an error response, whatever its body."""
        code: str | None = None
        message = ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("error"), str):
                code = body["error"]
            # API Gateway's own errors say {"message": ...} (or "Message") and no code.
            text = body.get("message", body.get("Message"))
            message = text if isinstance(text, str) else ""
        else:
            message = _snippet(response)
        message = self._scrub(message or response.reason_phrase or "no detail")
        return error_for_status(
            response.status_code,
            code,
            message,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _scrub(self, text: str) -> str:
        """``text`` without the token, should a proxy ever echo it."""
        return text.replace(self._token, "[token]") if self._token else text


class SQL:
    """SmartNoise SQL queries on the client's dataset (``client.sql``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def cost(
        self,
        query: str,
        epsilon: Amount,
        delta: Amount,
        mechanisms: Mapping[str, str] | None = None,
        *,
        level: float | None = None,
    ) -> Cost:
        """The price of ``query``, computed from the metadata only; debits nothing.

        ``cost.accuracy`` gives each output column's noise and CI half-width at ``level``
        (default 0.95), also from the metadata only.
        """
        body = _sql_body(query, epsilon, delta, mechanisms)
        if level is not None:
            body["level"] = level
        return self._client._price(body)

    @overload
    def query(
        self,
        query: str,
        epsilon: Amount,
        delta: Amount,
        mechanisms: Mapping[str, str] | None = ...,
        *,
        postprocess: bool = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[True] = ...,
        level: float | None = ...,
        reuse: bool = ...,
    ) -> QueryResult: ...

    @overload
    def query(
        self,
        query: str,
        epsilon: Amount,
        delta: Amount,
        mechanisms: Mapping[str, str] | None = ...,
        *,
        postprocess: bool = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[False],
        level: float | None = ...,
        reuse: bool = ...,
    ) -> Job: ...

    def query(
        self,
        query: str,
        epsilon: Amount,
        delta: Amount,
        mechanisms: Mapping[str, str] | None = None,
        *,
        postprocess: bool = True,
        dummy: bool = False,
        query_id: str | None = None,
        dummy_rows: int = 100,
        dummy_seed: int = 42,
        wait: bool = True,
        level: float | None = None,
        reuse: bool = False,
    ) -> QueryResult | Job:
        """Run ``query`` under DP and debit its cost (nothing with ``dummy=True``).

        ``result.accuracy`` gives each output column's CI half-width at ``level`` (default
        0.95), computed from the query and the metadata.

        ``reuse`` (default False: every call is a fresh, paid draw): with ``reuse=True``, if
        you already received a release of exactly this request (same query, ε, δ,
        mechanisms, postprocess) on the dataset's current version, made with
        ``reuse=True``, the server returns it again free (``result.reused``;
        ``result.query_id`` is the earlier one).

        The query is sent with ``query_id`` (a new UUID unless given). Sending the same id
        and payload again returns the stored answer without a second charge, which is how
        every retry is made; errors carry the id in ``query_id``.

        With ``wait=False`` the server runs it detached (debited at submission) and a
        :class:`Job` is returned at once: ``job.wait()`` gives the result. The blocking
        call also waits (with a progress bar on a terminal) if the server chose a job.
        """
        body = _sql_body(query, epsilon, delta, mechanisms)
        body["postprocess"] = postprocess
        if level is not None:
            body["level"] = level
        if reuse and not dummy:
            body["reuse"] = True
        return self._client._submit(
            body,
            query_id=query_id,
            dummy=dummy,
            dummy_rows=dummy_rows,
            dummy_seed=dummy_seed,
            wait=wait,
        )

    def epsilon_for(
        self,
        query: str,
        accuracy: float,
        level: float = 0.95,
        delta: Amount = 0,
        mechanisms: Mapping[str, str] | None = None,
        *,
        column: str | None = None,
        rtol: float = 0.01,
    ) -> float:
        """The smallest ε (per aggregate, as in :meth:`query`) at which ``query``'s stated
        CI half-width at ``level`` is at most ``accuracy``: for ``column``, or for every
        output column that has a half-width. Free: metadata only, through the plan route.

        A search: ε from 1e-3 to 1e3 on a grid, then 8 points per step between the last ε
        too small and the first large enough, until they are within a factor ``1 + rtol``
        (default 1%). The answer is an ε that reaches the target, at most ``1 + rtol`` times
        the smallest one on the server's pricing (half-widths fall as ε grows). Raises
        ``ValueError`` if no ε up to 1e3 reaches it.
        """
        if not accuracy > 0:
            raise ValueError(f"accuracy must be > 0, got {accuracy}")

        def meets(epsilons: list[float]) -> list[bool]:
            bodies = [_sql_body(query, eps, delta, mechanisms) for eps in epsilons]
            frame = self._client.plan(bodies, level=level)
            return [_half_width(acc, column) <= accuracy for acc in frame["accuracy"]]

        grid = [float(10.0 ** (k / 2)) for k in range(-6, 7)]  # 1e-3 ... 1e3
        found = meets(grid)
        if not any(found):
            raise ValueError(f"no epsilon up to {grid[-1]:g} reaches accuracy {accuracy}")
        first = found.index(True)
        if first == 0:
            return grid[0]
        low, high = grid[first - 1], grid[first]
        while high / low > 1 + rtol:
            steps = [float(low * (high / low) ** (i / 9)) for i in range(1, 9)]
            answers = meets(steps)
            inside = [eps for eps, ok in zip(steps, answers, strict=True) if ok]
            outside = [eps for eps, ok in zip(steps, answers, strict=True) if not ok]
            high = min(inside, default=high)
            low = max([eps for eps in outside if eps < high], default=low)
        return high


def _half_width(accuracy: pd.DataFrame | None, column: str | None) -> float:
    """The widest stated half-width (of ``column``, or of every column that has one)."""
    if accuracy is None or accuracy.empty:
        raise ValueError("the server states no accuracy for this query")
    widths = accuracy["accuracy"] if column is None else accuracy.loc[[column], "accuracy"]
    widths = widths.dropna()
    if widths.empty:
        raise ValueError(f"no analytic half-width for {column or 'any column'} of this query")
    return float(widths.max())


class OpenDP:
    """OpenDP pipelines on the client's dataset (``client.opendp``).

    Needs ``opendp`` installed at the server's version (``pip install
    "neblina-client[opendp]"``) and ``dp.enable_features("contrib")``. Build pipelines on
    :meth:`space`: the server feeds the dataset as CSV text, read by the
    ``make_split_dataframe`` that ``space()`` returns.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def space(self, column: str | None = None) -> Any:
        """The start of a pipeline on this dataset, from its metadata.

        ``space()`` is the dataframe of strings (``make_split_dataframe`` over the server's
        CSV text); ``space("bill_length_mm")`` selects one column as a vector of strings, to
        continue with ``>> dp.t.then_cast_default(float) >> ...``.
        """
        columns = [str(name) for name in self._client.metadata()["columns"]]
        return input_space(columns, column)

    def context(
        self, privacy_loss: Any, split_evenly_over: int = 1, fixed_delta: float | None = None
    ) -> PolarsContext:
        """OpenDP's Polars ``Context`` on this dataset (needs the ``polars`` extra).

        ``privacy_loss`` is the loss of all the context's queries together, split evenly over
        ``split_evenly_over`` of them, as in ``dp.Context.compositor``: ε (a number or
        ``dp.loss_of(epsilon=...)``, Laplace noise) or ``dp.loss_of(rho=...)`` (zCDP,
        Gaussian noise; charged as (ε, δ) read at ``fixed_delta``). Its LazyFrame is empty
        with the dataset's schema (from the metadata), so ``query().summarize()`` is free and
        local, while ``cost()`` and ``release()`` ask the server (engine ``opendp_polars``)::

            ctx = client.opendp.context(privacy_loss=1.0, split_evenly_over=2)
            q = ctx.query().group_by("sex").agg(dp.len(), pl.col("bill_length_mm")
                .fill_null(45.0).dp.mean((30.0, 65.0)))
            q.summarize(alpha=0.05); q.cost(); q.release(dummy=True); q.release()
        """
        return PolarsContext(
            self._client, self._client.metadata(), privacy_loss, split_evenly_over, fixed_delta
        )

    def cost(self, measurement: Any, fixed_delta: Amount | None = None) -> Cost:
        """The price of ``measurement``: its privacy map at the dataset's ``max_ids``; free.

        ``fixed_delta`` is required (and only allowed) when the measurement's output measure
        is zCDP or smoothed max divergence: the δ at which its ε is read.
        """
        return self._client._price(_opendp_body(measurement, fixed_delta))

    @overload
    def query(
        self,
        measurement: Any,
        fixed_delta: Amount | None = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        *,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[True] = ...,
        reuse: bool = ...,
    ) -> QueryResult: ...

    @overload
    def query(
        self,
        measurement: Any,
        fixed_delta: Amount | None = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        *,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[False],
        reuse: bool = ...,
    ) -> Job: ...

    def query(
        self,
        measurement: Any,
        fixed_delta: Amount | None = None,
        dummy: bool = False,
        query_id: str | None = None,
        *,
        dummy_rows: int = 100,
        dummy_seed: int = 42,
        wait: bool = True,
        reuse: bool = False,
    ) -> QueryResult | Job:
        """Run ``measurement`` on the dataset and debit its cost (nothing with ``dummy=True``).

        ``result`` is what the measurement released: a number or a list. Retries reuse the
        ``query_id`` (a new UUID unless given), so a release is never charged twice.
        ``wait=False`` returns a :class:`Job` at once, as for ``client.sql.query``.
        ``reuse=True``: an identical earlier release comes back free, as for
        ``client.sql.query`` (default False).
        """
        body = _opendp_body(measurement, fixed_delta)
        if reuse and not dummy:
            body["reuse"] = True
        return self._client._submit(
            body,
            query_id=query_id,
            dummy=dummy,
            dummy_rows=dummy_rows,
            dummy_seed=dummy_seed,
            wait=wait,
        )


class DiffPrivLib:
    """DiffPrivLib models fitted on the client's dataset (``client.diffprivlib``).

    Needs the ``diffprivlib`` extra (``pip install "neblina-client[diffprivlib]"``). Build a
    scikit-learn ``Pipeline`` of diffprivlib objects as usual (each with its ``epsilon``;
    bounds and ``data_norm`` may be left out where the metadata gives them, see
    docs/diffprivlib.md); the server fits it once and returns its parameters, rebuilt here
    into a fitted ``Pipeline`` of the same classes. No score is returned unless a fit asks
    for a DP one (``score_epsilon``, charged): score the model on your own rows.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def cost(
        self,
        pipeline: Any,
        feature_columns: list[str],
        target_column: str | None = None,
        imputer_strategy: str = "drop",
        *,
        score_epsilon: Amount | None = None,
        test_size: float | None = None,
    ) -> Cost:
        """The price of fitting ``pipeline``: ``max_ids`` × (the sum of its steps' ε, plus
        ``score_epsilon`` for a DP score); free."""
        body = _diffprivlib_body(
            pipeline, feature_columns, target_column, imputer_strategy, score_epsilon, test_size
        )
        return self._client._price(body)

    @overload
    def fit(
        self,
        pipeline: Any,
        feature_columns: list[str],
        target_column: str | None = ...,
        imputer_strategy: str = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        *,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[True] = ...,
        score_epsilon: Amount | None = ...,
        test_size: float | None = ...,
    ) -> FittedModel: ...

    @overload
    def fit(
        self,
        pipeline: Any,
        feature_columns: list[str],
        target_column: str | None = ...,
        imputer_strategy: str = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        *,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[False],
        score_epsilon: Amount | None = ...,
        test_size: float | None = ...,
    ) -> FitJob: ...

    def fit(
        self,
        pipeline: Any,
        feature_columns: list[str],
        target_column: str | None = None,
        imputer_strategy: str = "drop",
        dummy: bool = False,
        query_id: str | None = None,
        *,
        dummy_rows: int = 100,
        dummy_seed: int = 42,
        wait: bool = True,
        score_epsilon: Amount | None = None,
        test_size: float | None = None,
    ) -> FittedModel | FitJob:
        """Fit ``pipeline`` on the dataset and debit its cost (nothing with ``dummy=True``).

        ``.model`` is the fitted ``Pipeline``; ``.release`` the parameters as the server sent
        them. Retries reuse the ``query_id``, so a fit is never charged twice.

        With ``wait=False`` the server fits it as a job (debited at submission) and a
        :class:`FitJob` is returned at once: ``job.wait()`` gives the :class:`FittedModel`,
        ``job.status()`` the phase and the fraction of the steps fitted.

        ``score_epsilon`` (a classifier only) holds out ``test_size`` of the rows (default
        0.2), fits on the others and releases the accuracy on the held-out rows with noise
        at that ε, charged on top (``.score``; docs/diffprivlib.md). Without it no score
        is released (``.score`` is None).
        """
        body = _diffprivlib_body(
            pipeline, feature_columns, target_column, imputer_strategy, score_epsilon, test_size
        )
        answer = self._client._submit(
            body,
            query_id=query_id,
            dummy=dummy,
            dummy_rows=dummy_rows,
            dummy_seed=dummy_seed,
            wait=wait,
        )
        names = step_names(pipeline)
        if isinstance(answer, Job):  # wait=False (with wait=True, _submit waits on a job)
            return FitJob(answer, names)
        return _fitted(answer, names)

    def job(self, query_id: str, dataset: str | None = None) -> FitJob:
        """A handle on a fit submitted earlier with ``wait=False`` (steps named by class)."""
        return FitJob(self._client.job(query_id, dataset))


def _fitted(answer: QueryResult, names: list[str]) -> FittedModel:
    release = answer.result
    if not isinstance(release, dict):
        raise NeblinaError("unexpected response from the server: no model", code="invalid_response")
    return FittedModel(model=rebuild(release, names), release=release, answer=answer)


class FitJob(JobHandle):
    """A DiffPrivLib fit submitted with ``wait=False``: it runs on the server whether or not
    anyone waits (its cost was debited at submission).

    ``status()`` is the job's :class:`JobStatus` (phase, fraction of the steps fitted);
    ``wait()`` polls as :meth:`Job.wait` does and returns the :class:`FittedModel`. A lost
    handle is rebuilt from the id: ``client.diffprivlib.job(query_id)``.
    """

    def __init__(self, job: Job, names: list[str] | None = None) -> None:
        super().__init__(job)
        self._names = names

    def wait(self, timeout: float | None = None, progress: bool | None = None) -> FittedModel:
        """Poll until the fit ends; the fitted model, or the error a blocking fit raises."""
        return _fitted(self.job.wait(timeout=timeout, progress=progress), self._names or [])


@dataclass(frozen=True, eq=False)
class FittedModel:
    """A fitted model: the rebuilt ``Pipeline``, the parameters released, and the answer."""

    model: Any
    release: dict[str, Any]
    answer: QueryResult

    @property
    def cost(self) -> Cost:
        return self.answer.cost

    @property
    def query_id(self) -> str:
        return self.answer.query_id

    @property
    def score(self) -> float | None:
        """The DP accuracy on the held-out rows (a fit with ``score_epsilon``), else None."""
        score = self.release.get("score")
        return None if not isinstance(score, dict) else float(score["accuracy"])


def _diffprivlib_body(
    pipeline: Any,
    feature_columns: list[str],
    target_column: str | None,
    imputer_strategy: str,
    score_epsilon: Amount | None = None,
    test_size: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "engine": DIFFPRIVLIB,
        "pipeline": pipeline_steps(pipeline),
        "feature_columns": list(feature_columns),
        "target_column": target_column,
        "imputer_strategy": imputer_strategy,
    }
    if score_epsilon is not None:
        body["score_epsilon"] = _amount("score_epsilon", score_epsilon)
    if test_size is not None:
        body["test_size"] = test_size
    return body


def _opendp_body(measurement: Any, fixed_delta: Amount | None) -> dict[str, Any]:
    body: dict[str, Any] = {"engine": OPENDP, "pipeline": pipeline_nodes(measurement)}
    if fixed_delta is not None:
        body["fixed_delta"] = _amount("fixed_delta", fixed_delta)
    return body


def _sql_body(
    query: str, epsilon: Amount, delta: Amount, mechanisms: Mapping[str, str] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "engine": SMARTNOISE_SQL,
        "query": query,
        "epsilon": _amount("epsilon", epsilon),
        "delta": _amount("delta", delta),
    }
    if mechanisms is not None:
        body["mechanisms"] = dict(mechanisms)
    return body


def _amount(name: str, value: Amount) -> float | int | str:
    """ε or δ as sent: floats and ints as JSON numbers, Decimals and strings as strings."""
    if isinstance(value, bool) or not isinstance(value, (float, int, str, Decimal)):
        raise TypeError(f"{name} must be a float, int, str or Decimal, got {value!r}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{name} must be finite, got {value}")
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _snippet(response: httpx.Response, size: int = 200) -> str:
    text = response.text.strip()
    return text if len(text) <= size else text[:size] + "..."
