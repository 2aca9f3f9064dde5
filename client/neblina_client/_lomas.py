"""Lomas's client surface over Neblina (the implementation of :mod:`neblina_client.lomas`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import pandas as pd

from ._client import Client as NeblinaClient
from ._diffprivlib import UNSUPERVISED, step_classes
from ._exceptions import (
    AuthenticationError,
    BudgetExhaustedError,
    EngineError,
    InvalidRequestError,
    NeblinaError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
)
from ._types import ArchivedQuery, QueryResult

T = TypeVar("T")


# errors -----------------------------------------------------------------------------------
class LomasException(Exception):
    """A Lomas exception class raised for a Neblina error (kept as ``error``)."""

    def __init__(self, message: str, error: NeblinaError | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error


class InvalidQueryException(LomasException):
    """Lomas's 400: a bad query or input, an unknown dataset, or not enough budget."""


class ExternalLibraryException(LomasException):
    """Lomas's 422: the DP library refused the query."""

    def __init__(self, library: str, message: str, error: NeblinaError | None = None) -> None:
        super().__init__(message, error)
        self.library = library


class UnauthorizedAccessException(LomasException):
    """Lomas's 403: no access (here: a missing, revoked or expired token, or no grant)."""


class InternalServerException(LomasException):
    """Lomas's 500: the server failed and says no more."""


class NotSupportedInNeblina(NotImplementedError):
    """A Lomas feature with no Neblina counterpart; the message names the Neblina way."""


def _lomas_error(error: NeblinaError, library: str | None) -> Exception:
    message = str(error)
    if isinstance(error, EngineError):
        return ExternalLibraryException(library or "", message, error)
    if isinstance(error, (InvalidRequestError, BudgetExhaustedError, NotFoundError)):
        return InvalidQueryException(message, error)
    if isinstance(error, (AuthenticationError, PermissionDeniedError)):
        return UnauthorizedAccessException(message, error)
    if isinstance(error, ServerError):
        return InternalServerException(message, error)
    return error  # connection, rate limit, conflicts: Neblina's own errors


def _translated(library: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except NeblinaError as error:
                translated = _lomas_error(error, library)
                if translated is error:
                    raise
                raise translated from error

        return wrapper

    return decorate


# responses --------------------------------------------------------------------------------
def _float(value: Decimal) -> float:
    """An amount as Lomas gives it: the nearest float (the server keeps the exact decimal)."""
    return float(value)


@dataclass(frozen=True)
class InitialBudgetResponse:
    """``get_initial_budget()``."""

    initial_epsilon: float
    initial_delta: float


@dataclass(frozen=True)
class SpentBudgetResponse:
    """``get_total_spent_budget()``."""

    total_spent_epsilon: float
    total_spent_delta: float


@dataclass(frozen=True)
class RemainingBudgetResponse:
    """``get_remaining_budget()``."""

    remaining_epsilon: float
    remaining_delta: float


@dataclass(frozen=True)
class CostResponse:
    """What ``cost()`` returns: the price of a query."""

    epsilon: float
    delta: float


@dataclass(frozen=True, eq=False)
class SmartnoiseSQLQueryResult:
    """``QueryResponse.result`` of a SmartNoise SQL query: ``df`` is a DataFrame."""

    df: pd.DataFrame
    res_type: str = "smartnoise_sql"


@dataclass(frozen=True)
class OpenDPQueryResult:
    """``QueryResponse.result`` of an OpenDP pipeline: ``value`` is what it released."""

    value: Any
    res_type: str = "opendp"


@dataclass(frozen=True, eq=False)
class DiffPrivLibQueryResult:
    """``QueryResponse.result`` of a DiffPrivLib fit: ``model`` is the fitted ``Pipeline``.

    Rebuilt on the client from the parameters the server released (JSON), never unpickled.
    ``score`` is always None: Lomas returned the test split's exact score, an un-noised
    statistic of the private data, which Neblina never releases (score the model on your own
    rows or on ``get_dummy_dataset()``).
    """

    model: Any
    score: float | None = None
    res_type: str = "diffprivlib"


@dataclass(frozen=True, eq=False)
class SmartnoiseSynthSamples:
    """``QueryResponse.result`` of a SmartNoise-Synth query: ``df_samples``, the rows."""

    df_samples: pd.DataFrame
    res_type: str = "sn_synth_samples"


@dataclass(frozen=True, eq=False)
class QueryResponse:
    """What ``query()`` returns: the cost, who asked, and the result (Lomas's shape).

    ``query_id`` is Neblina's archive id of the release (None for a dummy run).
    """

    epsilon: float
    delta: float
    requested_by: str
    result: (
        SmartnoiseSQLQueryResult
        | OpenDPQueryResult
        | DiffPrivLibQueryResult
        | SmartnoiseSynthSamples
    )
    query_id: str | None = None


def _response(answer: QueryResult, requested_by: str) -> QueryResponse:
    result: SmartnoiseSQLQueryResult | OpenDPQueryResult
    if isinstance(answer.result, pd.DataFrame):
        result = SmartnoiseSQLQueryResult(df=answer.result)
    else:
        result = OpenDPQueryResult(value=answer.result)
    return QueryResponse(
        epsilon=_float(answer.cost.epsilon),
        delta=_float(answer.cost.delta),
        requested_by=requested_by,
        result=result,
        query_id=None if answer.dummy else answer.query_id,
    )


# the client -------------------------------------------------------------------------------
class Client:
    """Lomas's ``Client(url, user_name, dataset_name)``, plus Neblina's ``token``.

    ``token`` defaults to ``NEBLINA_TOKEN`` (then ``.neblina/local.env``); further keyword
    arguments go to :class:`neblina_client.Client` (``timeout``, ``max_retries``,
    ``transport``...), which is ``client.neblina``.
    """

    def __init__(
        self,
        url: str,
        user_name: str,
        dataset_name: str,
        token: str | None = None,
        **options: Any,
    ) -> None:
        self.url = url
        self.user_name = user_name
        self.dataset_name = dataset_name
        self.neblina = NeblinaClient(url, token, dataset_name, **options)
        self.smartnoise_sql = SmartnoiseSQLClient(self)
        self.opendp = OpenDPClient(self)
        self.diffprivlib = DiffPrivLibClient(self)
        self.smartnoise_synth = SmartnoiseSynthClient(self)

    def __repr__(self) -> str:
        return f"lomas.Client(url={self.url!r}, dataset_name={self.dataset_name!r})"

    @_translated()
    def get_dataset_metadata(self) -> dict[str, Any]:
        """The dataset's metadata (Lomas's format)."""
        return self.neblina.metadata()

    @_translated()
    def get_dummy_dataset(self, nb_rows: int = 100, seed: int = 42) -> pd.DataFrame:
        """Fake rows with the dataset's schema, from its metadata only (free)."""
        return self.neblina.dummy(rows=nb_rows, seed=seed)

    @_translated()
    def get_initial_budget(self) -> InitialBudgetResponse:
        """The initial (ε, δ) of the caller's grant."""
        initial = self.neblina.budget().initial
        return InitialBudgetResponse(_float(initial.epsilon), _float(initial.delta))

    @_translated()
    def get_total_spent_budget(self) -> SpentBudgetResponse:
        """What the caller has spent on the dataset."""
        spent = self.neblina.budget().spent
        return SpentBudgetResponse(_float(spent.epsilon), _float(spent.delta))

    @_translated()
    def get_remaining_budget(self) -> RemainingBudgetResponse:
        """What the caller can still spend (the dataset's cap included)."""
        budget = self.neblina.budget()
        left = budget.available if budget.available is not None else budget.remaining
        return RemainingBudgetResponse(_float(left.epsilon), _float(left.delta))

    @_translated()
    def get_previous_queries(self) -> list[dict[str, Any]]:
        """The caller's released queries, oldest first, as Lomas's archive documents.

        Each is ``{user_name, dataset_name, dp_librairy, client_input, response,
        timestamp}``; SmartNoise SQL results are pandas "tight" dicts and OpenDP pipelines
        stay JSON (``opendp_json``), never rebuilt or unpickled. Queries imported from Lomas
        come back as Lomas archived them (pickled models replaced by a note).
        """
        documents = []
        for record in reversed(self.neblina.history()):
            document = self._archive_document(record)
            if document is not None:
                documents.append(document)
        return documents

    def _archive_document(self, record: ArchivedQuery) -> dict[str, Any] | None:
        if record.state != "done":
            return None  # Lomas archives only released queries
        base = {
            "user_name": self.user_name,
            "dataset_name": self.dataset_name,
            "timestamp": record.created_at.timestamp(),
        }
        if record.engine.startswith("lomas:"):  # imported from Lomas
            lomas = record.request.get("lomas") or {}
            return {
                **base,
                "dp_librairy": lomas.get("library", record.engine.split(":", 1)[1]),
                "client_input": lomas.get("client_input", {}),
                "response": lomas.get("response", {}),
                "timestamp": lomas.get("timestamp", base["timestamp"]),
            }
        cost = {"epsilon": _float(record.cost.epsilon), "delta": _float(record.cost.delta)}
        request = record.request
        if record.engine == "smartnoise_sql":
            frame = record.result if isinstance(record.result, pd.DataFrame) else pd.DataFrame()
            client_input = {
                "dataset_name": self.dataset_name,
                "query_str": request.get("query"),
                "epsilon": float(request.get("epsilon", 0)),
                "delta": float(request.get("delta", 0)),
                "mechanisms": request.get("mechanisms", {}),
                "postprocess": request.get("postprocess", True),
            }
            result = {"res_type": "smartnoise_sql", "df": frame.to_dict(orient="tight")}
        elif record.engine == "opendp":
            fixed = request.get("fixed_delta")
            client_input = {
                "dataset_name": self.dataset_name,
                "opendp_json": json.dumps(request.get("pipeline")),
                "fixed_delta": None if fixed is None else float(fixed),
            }
            result = {"res_type": "opendp", "value": record.result}
        else:  # an opening balance or an engine Lomas does not know
            return None
        response = {**cost, "requested_by": self.user_name, "result": result}
        return {
            **base,
            "dp_librairy": record.engine,
            "client_input": client_input,
            "response": response,
        }


class SmartnoiseSQLClient:
    """``client.smartnoise_sql``: SQL over table ``df``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @_translated("smartnoise_sql")
    def cost(
        self,
        query: str,
        epsilon: float,
        delta: float,
        mechanisms: Mapping[str, str] | None = None,
    ) -> CostResponse:
        """The price of ``query``, from the metadata only; free."""
        cost = self._client.neblina.sql.cost(
            query, epsilon, delta, dict(mechanisms) if mechanisms else None
        )
        return CostResponse(_float(cost.epsilon), _float(cost.delta))

    @_translated("smartnoise_sql")
    def query(
        self,
        query: str,
        epsilon: float,
        delta: float,
        mechanisms: Mapping[str, str] | None = None,
        postprocess: bool = True,
        dummy: bool = False,
        nb_rows: int = 100,
        seed: int = 42,
    ) -> QueryResponse:
        """Run ``query``; debited once (free with ``dummy=True``). ``result.df``."""
        answer = self._client.neblina.sql.query(
            query,
            epsilon,
            delta,
            dict(mechanisms) if mechanisms else None,
            postprocess=postprocess,
            dummy=dummy,
            dummy_rows=nb_rows,
            dummy_seed=seed,
        )
        return _response(answer, self._client.user_name)


class OpenDPClient:
    """``client.opendp``: a ``dp.Measurement`` over the server's header-less CSV."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @staticmethod
    def _pipeline(opendp_pipeline: Any, kwargs: dict[str, Any]) -> Any:
        polars_way = (
            "Neblina's OpenDP-Polars queries start from "
            "client.neblina.opendp.context(privacy_loss=...).query(), sent as a JSON plan "
            "(a LazyFrame's binary form can run code, so Neblina never accepts one)"
        )
        if kwargs:
            raise NotSupportedInNeblina(
                f"opendp options {sorted(kwargs)} are not supported here: this takes a "
                f"dp.Measurement (Lomas 0.4's pipelines); {polars_way}"
            )
        if type(opendp_pipeline).__name__ == "LazyFrame" or hasattr(opendp_pipeline, "collect"):
            raise NotSupportedInNeblina(
                "polars plans are not taken here: build a dp.Measurement on "
                "make_split_dataframe(separator=',', col_names=<the metadata's columns>) "
                f"as in Lomas 0.4; {polars_way}"
            )
        return opendp_pipeline

    @_translated("opendp")
    def cost(
        self, opendp_pipeline: Any, fixed_delta: float | None = None, **kwargs: Any
    ) -> CostResponse:
        """The price of the pipeline: its privacy map at the dataset's ``max_ids``; free."""
        pipeline = self._pipeline(opendp_pipeline, kwargs)
        cost = self._client.neblina.opendp.cost(pipeline, fixed_delta)
        return CostResponse(_float(cost.epsilon), _float(cost.delta))

    @_translated("opendp")
    def query(
        self,
        opendp_pipeline: Any,
        fixed_delta: float | None = None,
        dummy: bool = False,
        nb_rows: int = 100,
        seed: int = 42,
        **kwargs: Any,
    ) -> QueryResponse:
        """Run the pipeline; debited once (free with ``dummy=True``). ``result.value``."""
        pipeline = self._pipeline(opendp_pipeline, kwargs)
        answer = self._client.neblina.opendp.query(
            pipeline, fixed_delta, dummy, dummy_rows=nb_rows, dummy_seed=seed
        )
        return _response(answer, self._client.user_name)


class DiffPrivLibClient:
    """``client.diffprivlib``: a scikit-learn ``Pipeline`` of diffprivlib objects, as in Lomas.

    Lomas's ``target_columns`` list becomes Neblina's single ``target_column``. Lomas's
    ``test_size`` and ``test_train_split_seed`` are accepted and not used: Neblina fits on the
    dataset and releases no test score (a seeded split of private rows breaks the
    neighbouring-datasets argument, and the exact score was not private), so
    ``result.score`` is None and ``result.model`` the fitted pipeline (docs/diffprivlib.md).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @staticmethod
    def _target(target_columns: Sequence[str] | None, pipeline: Any) -> str | None:
        """Neblina's ``target_column``: none for an unsupervised last step (Lomas sent its
        ``target_columns`` with a KMeans or PCA too, and diffprivlib ignored it)."""
        steps = step_classes(pipeline)
        if steps and steps[-1] in UNSUPERVISED:
            return None
        columns = [c for c in (target_columns or []) if c]
        if len(columns) > 1:
            raise NotSupportedInNeblina(
                f"target_columns {columns}: Neblina fits one target column "
                "(client.neblina.diffprivlib.fit(pipeline, features, target_column=...))"
            )
        return columns[0] if columns else None

    @_translated("diffprivlib")
    def cost(
        self,
        pipeline: Any,
        feature_columns: Sequence[str] = ("",),
        target_columns: Sequence[str] | None = ("",),
        test_size: float = 0.2,
        test_train_split_seed: int = 1,
        imputer_strategy: str = "drop",
    ) -> CostResponse:
        """The price of fitting ``pipeline``, from the request and metadata only; free."""
        cost = self._client.neblina.diffprivlib.cost(
            pipeline,
            list(feature_columns),
            self._target(target_columns, pipeline),
            imputer_strategy,
        )
        return CostResponse(_float(cost.epsilon), _float(cost.delta))

    @_translated("diffprivlib")
    def query(
        self,
        pipeline: Any,
        feature_columns: Sequence[str],
        target_columns: Sequence[str] | None = None,
        test_size: float = 0.2,
        test_train_split_seed: int = 1,
        imputer_strategy: str = "drop",
        dummy: bool = False,
        nb_rows: int = 100,
        seed: int = 42,
    ) -> QueryResponse:
        """Fit ``pipeline``; debited once (free with ``dummy=True``). ``result.model``."""
        fitted = self._client.neblina.diffprivlib.fit(
            pipeline,
            list(feature_columns),
            self._target(target_columns, pipeline),
            imputer_strategy,
            dummy=dummy,
            dummy_rows=nb_rows,
            dummy_seed=seed,
        )
        answer = fitted.answer
        return QueryResponse(
            epsilon=_float(answer.cost.epsilon),
            delta=_float(answer.cost.delta),
            requested_by=self._client.user_name,
            result=DiffPrivLibQueryResult(model=fitted.model),
            query_id=None if answer.dummy else answer.query_id,
        )


class SmartnoiseSynthClient:
    """``client.smartnoise_synth``: Lomas's calls over Neblina's ``client.synth``.

    ``mst``, ``aim`` and ``mwem`` run (``pacsynth`` and the GAN synthesizers are refused:
    ``unsupported_synthesizer``, docs/synth.md). The transformers come from the dataset's
    metadata: ``nullable`` is accepted and not used (the metadata says which columns are
    nullable), and ``constraints`` are not supported. ``return_model=True`` is refused: no
    model object crosses the wire; ask for ``nb_samples`` rows instead. ``delta=None`` is
    snsynth's default 1e-9 for MST and AIM, as Lomas charged it.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @staticmethod
    def _check(constraints: Any, return_model: bool = False) -> None:
        if constraints:
            raise NotSupportedInNeblina(
                "constraints: Neblina derives every column's transformer from the metadata "
                "(bounds, categories); leave constraints out"
            )
        if return_model:
            raise NotSupportedInNeblina(
                "return_model=True: Neblina never sends a model object; the release is "
                "nb_samples synthetic rows (ask for more rows instead)"
            )

    @_translated("smartnoise_synth")
    def cost(
        self,
        synth_name: str,
        epsilon: float,
        delta: float | None = None,
        select_cols: Sequence[str] = (),
        synth_params: Mapping[str, Any] | None = None,
        nullable: bool = True,
        constraints: Any = None,
    ) -> CostResponse:
        """The price of a synthesis: (ε, δ) exactly, from the request alone; free."""
        self._check(constraints)
        cost = self._client.neblina.synth.cost(
            synth_name, epsilon, delta, list(select_cols) or None, dict(synth_params or {})
        )
        return CostResponse(_float(cost.epsilon), _float(cost.delta))

    @_translated("smartnoise_synth")
    def query(
        self,
        synth_name: str,
        epsilon: float,
        delta: float | None = None,
        select_cols: Sequence[str] = (),
        synth_params: Mapping[str, Any] | None = None,
        nullable: bool = True,
        constraints: Any = None,
        dummy: bool = False,
        return_model: bool = False,
        condition: str = "",
        nb_samples: int = 200,
        nb_rows: int = 100,
        seed: int = 42,
    ) -> QueryResponse:
        """Fit and sample; debited once (free with ``dummy=True``). ``result.df_samples``."""
        self._check(constraints, return_model)
        job = self._client.neblina.synth.sample(
            synth_name,
            epsilon,
            delta,
            list(select_cols) or None,
            dict(synth_params or {}),
            nb_samples=nb_samples,
            condition=condition or None,
            dummy=dummy,
            dummy_rows=nb_rows,
            dummy_seed=seed,
            wait=False,
        )
        rows = job.wait()
        answer = job.answer
        assert answer is not None
        return QueryResponse(
            epsilon=_float(answer.cost.epsilon),
            delta=_float(answer.cost.delta),
            requested_by=self._client.user_name,
            result=SmartnoiseSynthSamples(df_samples=rows),
            query_id=None if answer.dummy else answer.query_id,
        )
