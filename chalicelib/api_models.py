"""The API's request and response models, from which the OpenAPI document is generated.

Build time only: pydantic is a development dependency, never shipped to Lambda. The server
validates requests with its own plain functions (``validation``, the engines) and serves the
document committed as ``chalicelib/openapi.json``; regenerate it after changing this file
(a test fails while the committed file differs from a fresh generation)::

    .venv/bin/python -m chalicelib.api_models

Adding an endpoint: its models here, one ``Operation`` in ``OPERATIONS``, then regenerate.
Response models accept unknown fields (a new field in an answer breaks no client); request
models refuse them, as the server does.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import GenerateJsonSchema, SkipJsonSchema, models_json_schema

from chalicelib import VERSION, errors
from chalicelib.models import AMOUNT_QUANTUM, MAX_AMOUNT, QueryPhase, QueryState

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
REF = "#/components/schemas/{model}"

Decimal = Annotated[
    str,
    Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="an exact decimal", examples=["1.5"]),
]
# Privacy amounts in requests: a JSON number or a decimal string, within the ledger's range
# (docs/ledger.md, "Amounts"); the server's validation is the authority (0 < δ < 1e-20 is 400).
AmountText = Annotated[str, Field(pattern=r"^[0-9.eE+-]+$")]
Epsilon = Annotated[
    Annotated[float, Field(ge=float(AMOUNT_QUANTUM), le=float(MAX_AMOUNT))] | AmountText,
    Field(description="a number in [1e-20, 1e9], as a JSON number or a decimal string"),
]
Delta = Annotated[
    Annotated[float, Field(ge=0, lt=1)] | AmountText,
    Field(description="0, or a number in [1e-20, 1), as a JSON number or a decimal string"),
]
PositiveDelta = Annotated[
    Annotated[float, Field(gt=0, lt=1)] | AmountText,
    Field(description="a number in [1e-20, 1), as a JSON number or a decimal string"),
]
# an optional field the server leaves out rather than sending null
Absent = SkipJsonSchema[None]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
DatasetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
QueryId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class Response(BaseModel):
    """A response body: documents what the server sends and tolerates what it may add."""

    model_config = ConfigDict(extra="allow")


class Request(BaseModel):
    """A request body: unknown fields are refused (400), as the server does."""

    model_config = ConfigDict(extra="forbid")


# --- values shared by many answers -----------------------------------------------------
class Cost(Response):
    """A privacy cost, or an amount of budget, as exact decimal strings."""

    epsilon: Decimal
    delta: Decimal


class Error(Response):
    """Every error answer: branch on ``error`` (a stable code), never on ``message``."""

    error: str = Field(description="stable code (docs/api.md lists them by status)")
    message: str


class Table(Response):
    """Rows (dummy data, SQL results): one object per row, ``null`` for missing values."""

    type: Literal["table"]
    columns: list[str]
    dtypes: dict[str, str] = Field(description="pandas dtype of each column")
    records: list[dict[str, Any]]
    accuracy: Accuracy | Absent = Field(
        default=None, description="OpenDP Polars releases only: the accuracy of each statistic"
    )


class AccuracyColumn(Response):
    """OpenDP's summary of one released statistic (``summarize_polars_measurement``)."""

    column: str
    aggregate: str
    distribution: str | None
    scale: float | None
    accuracy: float | None = Field(
        default=None, description="the noise stays within ±accuracy with probability 1 − alpha"
    )


class Accuracy(Response):
    """The accuracy of an OpenDP Polars release, from the metadata (docs/opendp.md)."""

    alpha: float
    columns: list[AccuracyColumn]


Table.model_rebuild()


class StatedAccuracyColumn(Response):
    """The accuracy of one output column (docs/api.md, "Accuracy")."""

    column: str
    aggregate: str | None = Field(description="the aggregate (or expression) released")
    distribution: str | None = Field(
        description="Laplace, Gaussian, Integer Laplace, Integer Gaussian; null without noise"
    )
    scale: float | None = Field(description="the noise scale (b for Laplace, σ for Gaussian)")
    accuracy: float | None = Field(
        description="half-width of the confidence interval at level: the released value is "
        "within ±accuracy of the exact value with probability ≥ level; null with a reason"
    )
    reason: str | None = Field(description="why accuracy is null (null when it is given)")
    components: list[StatedAccuracyColumn] | None = Field(
        description="for a column computed from several noisy aggregates (AVG = SUM / COUNT, "
        "VAR, STDDEV): the accuracy of each aggregate it is computed from"
    )


class StatedAccuracy(Response):
    """The accuracy of a price or a release, from the request and the metadata only."""

    level: float = Field(description="the confidence level asked (default 0.95)")
    columns: list[StatedAccuracyColumn] | None = Field(
        description="one entry per output column; null when the engine has no analytic answer"
    )
    reason: str | None = Field(description="why columns is null (null when they are given)")


class Value(Response):
    """An OpenDP release: a number, or a (possibly nested) list of numbers."""

    type: Literal["value"]
    value: Any = Field(description="a number, or a (possibly nested) list of numbers")


class Model(Response):
    """A fitted model's parameters (DiffPrivLib): the client rebuilds a working pipeline."""

    type: Literal["model"]
    library: str
    feature_columns: list[str]
    target_column: str | None
    classes: list[Any] | None = Field(description="a classifier's classes (the metadata's)")
    steps: list[dict[str, Any]] = Field(
        description="each step: its class, its complete parameters and the fitted ones"
    )
    score: dict[str, Any] | None = Field(
        default=None,
        description="a scored fit's DP accuracy: accuracy, test_rows, epsilon, mechanism",
    )


Result = Annotated[Table | Value | Model, Field(discriminator="type")]


# --- datasets --------------------------------------------------------------------------
class DatasetSummary(Response):
    """A dataset the caller holds a grant on."""

    name: str
    description: str
    rows: int


class DatasetList(Response):
    """The datasets the caller holds a grant on."""

    datasets: list[DatasetSummary]


class Precision(IntEnum):
    """Bits of a numeric column."""

    BITS_32 = 32
    BITS_64 = 64


class _Column(Response):
    nullable: bool = False
    private_id: bool = False
    description: str | Absent = None


class StringColumn(_Column):
    """Text; with ``categories`` its values are public (usable in GROUP BY)."""

    type: Literal["string"]
    categories: list[str] | Absent = None
    cardinality: int | Absent = None


class IntColumn(_Column):
    """An integer column, bounded by ``lower``/``upper`` or given by ``categories``."""

    type: Literal["int"]
    lower: int | Absent = None
    upper: int | Absent = None
    categories: list[int] | Absent = None
    cardinality: int | Absent = None
    precision: Precision = Precision.BITS_64


class FloatColumn(_Column):
    """A real-valued column with public bounds."""

    type: Literal["float"]
    lower: float
    upper: float
    precision: Precision = Precision.BITS_64


class BooleanColumn(_Column):
    """A boolean column."""

    type: Literal["boolean"]


class DatetimeColumn(_Column):
    """A date or datetime column with public bounds (ISO 8601 strings)."""

    type: Literal["datetime"]
    lower: str
    upper: str


Column = Annotated[
    StringColumn | IntColumn | FloatColumn | BooleanColumn | DatetimeColumn,
    Field(discriminator="type"),
]


class Metadata(Response):
    """Public metadata of a dataset (docs/metadata.md)."""

    max_ids: int = Field(ge=1, description="rows one individual may contribute")
    rows: int = Field(ge=1, description="public (approximate) number of rows")
    row_privacy: bool
    censor_dims: bool
    description: str | Absent = None
    columns: dict[str, Column]


class DatasetMetadata(Response):
    """A dataset's public metadata."""

    dataset: str
    metadata: Metadata


class DummyParams(Request):
    """Query parameters of the dummy route."""

    rows: int = Field(default=100, ge=1, le=100000)
    seed: int = Field(default=42, ge=0, le=4294967295)


class DummyTable(Response):
    """Dummy rows generated from the metadata only."""

    dataset: str
    rows: int
    seed: int
    table: Table


class CapBudget(Response):
    """A dataset-wide cap over all its researchers' grants: its limit and what is left."""

    limit: Cost
    remaining: Cost


class Binding(StrEnum):
    """The budget that binds: the caller's grant or the dataset's cap."""

    GRANT = "grant"
    CAP = "cap"


class LimitedBy(Response):
    """Which budget binds, for ε and for δ: the caller's grant or the dataset's cap."""

    epsilon: Binding
    delta: Binding


class Budget(Response):
    """The caller's grant on a dataset: ``remaining = initial - spent`` exactly.

    ``available`` is what the caller can really spend: ``remaining``, or less where the
    dataset's ``cap`` has less left (``limited_by`` says which binds).
    """

    dataset: str
    initial: Cost
    spent: Cost
    remaining: Cost
    cap: CapBudget | None = Field(description="the dataset's cap, or null when none applies")
    available: Cost
    limited_by: LimitedBy


# --- queries ---------------------------------------------------------------------------
class Mechanism(StrEnum):
    """A SmartNoise mechanism."""

    LAPLACE = "laplace"
    GEOMETRIC = "geometric"
    DISCRETE_LAPLACE = "discrete_laplace"
    GAUSSIAN = "gaussian"


class Mechanisms(Request):
    """Override of SmartNoise's mechanism per statistic."""

    count: Mechanism | Absent = None
    sum_int: Mechanism | Absent = None
    sum_large_int: Mechanism | Absent = None
    sum_float: Mechanism | Absent = None
    sum_large_float: Mechanism | Absent = None
    threshold: Mechanism | Absent = None


class _CostFields(Request):
    level: float = Field(
        default=0.95,
        ge=0.5,
        le=0.999999,
        description="the confidence level of the accuracy returned (docs/api.md, Accuracy)",
    )


class SqlCostRequest(_CostFields):
    """A SmartNoise SQL query to price."""

    engine: Literal["smartnoise_sql"]
    query: str = Field(min_length=1, max_length=10000)
    epsilon: Epsilon
    delta: Delta
    mechanisms: Mechanisms | Absent = None


class _QueryFields(Request):
    query_id: QueryId = Field(description="chosen by the client; a retry with it is free")
    dummy: bool = False
    dummy_rows: int = Field(default=100, ge=1, le=100000)
    dummy_seed: int = Field(default=42, ge=0, le=4294967295)
    wait: bool = Field(
        default=True,
        description=(
            "false: answer 202 at once with the record (state running, phase queued) and a "
            "Location to poll; the debit happens now, as for a waited query"
        ),
    )
    reuse: bool = Field(
        default=False,
        description=(
            "true: if the caller already holds a done release of this exact request (made "
            "with reuse: true) on the dataset's current version, return it (reused: true), "
            "debiting nothing"
        ),
    )


class SqlQueryRequest(_QueryFields, SqlCostRequest):
    """A SmartNoise SQL query to run."""

    postprocess: bool = True


class PipelineNodes(Request):
    """The node form of an OpenDP pipeline: ``{"__ref__": i}`` stands for node ``i``."""

    nodes: list[dict[str, Any]] = Field(min_length=1)


class OpenDPCostRequest(_CostFields):
    """An OpenDP measurement to price."""

    engine: Literal["opendp"]
    pipeline: str | PipelineNodes = Field(
        description=(
            "an OpenDP Measurement: dp.serialize's JSON text, or the same JSON with repeated "
            "calls written once (the last node is the pipeline; see docs/opendp.md)"
        )
    )
    fixed_delta: PositiveDelta | Absent = Field(
        default=None, description="required for zCDP and smoothed max divergence, else refused"
    )


class OpenDPQueryRequest(_QueryFields, OpenDPCostRequest):
    """An OpenDP measurement to run."""


class PolarsCostRequest(_CostFields):
    """An OpenDP Polars query to price (plan grammar: docs/opendp.md)."""

    engine: Literal["opendp_polars"]
    plan: list[dict[str, Any]] = Field(
        min_length=1,
        description=(
            "steps over the dataset (filter, with_columns, then select or group_by/agg) in "
            "Neblina's closed plan grammar; the client writes it from a dp.Context query"
        ),
    )
    epsilon: Epsilon | Absent = Field(
        default=None, description="this query's ε (pure DP, Laplace noise); or give rho"
    )
    rho: Epsilon | Absent = Field(
        default=None, description="this query's ρ (zCDP, Gaussian noise), with fixed_delta"
    )
    fixed_delta: PositiveDelta | Absent = Field(
        default=None, description="with rho: the δ at which the ε charged is read"
    )
    alpha: float | Absent = Field(
        default=None, gt=0, lt=1, description="the level of the accuracy returned (0.05)"
    )


class PolarsQueryRequest(_QueryFields, PolarsCostRequest):
    """An OpenDP Polars query to run."""


class DiffPrivLibStep(Request):
    """One allowlisted diffprivlib class and its parameters (docs/diffprivlib.md)."""

    step: Literal[
        "StandardScaler",
        "PCA",
        "LogisticRegression",
        "LinearRegression",
        "GaussianNB",
        "DecisionTreeClassifier",
        "RandomForestClassifier",
        "KMeans",
    ]
    params: dict[str, Any] = Field(description="epsilon (required) and the allowlisted ones")


class DiffPrivLibCostRequest(_CostFields):
    """A DiffPrivLib pipeline to price."""

    engine: Literal["diffprivlib"]
    pipeline: list[DiffPrivLibStep] = Field(min_length=1, max_length=8)
    feature_columns: list[str] = Field(min_length=1, max_length=64)
    target_column: str | None = None
    imputer_strategy: Literal["drop", "mean", "median", "most_frequent"] = "drop"
    score_epsilon: Epsilon | None = Field(
        default=None,
        description="a classifier's DP accuracy on held-out rows, at this ε, charged on top",
    )
    test_size: float | None = Field(
        default=None, gt=0, lt=1, description="the held-out fraction (default 0.2)"
    )


class DiffPrivLibQueryRequest(_QueryFields, DiffPrivLibCostRequest):
    """A DiffPrivLib pipeline to fit."""


class SynthCostRequest(_CostFields):
    """A SmartNoise-Synth synthesis to price (docs/synth.md): the price is (epsilon, delta)."""

    engine: Literal["smartnoise_synth"]
    synth_name: Literal["mst", "aim", "mwem"] = Field(
        description="the GAN synthesizers (dpctgan, patectgan, pategan, dpgan) and pacsynth "
        "are refused: 400 unsupported_synthesizer"
    )
    epsilon: Epsilon
    delta: PositiveDelta | None = Field(
        default=None, description="mst, aim: default 1e-9 (snsynth's); mwem: null or 0"
    )
    select_cols: list[str] | None = Field(default=None, max_length=32)
    synth_params: dict[str, int | float] = Field(
        default_factory=dict, description="numbers from the synthesizer's allowlist"
    )
    nb_samples: int = Field(default=200, ge=1, le=100000)
    condition: str | None = Field(default=None, max_length=500)
    return_model: Literal[False] = False


class SynthQueryRequest(_QueryFields, SynthCostRequest):
    """A SmartNoise-Synth synthesis to run: always a job (202, then poll)."""


class CostRequest(
    RootModel[
        SqlCostRequest
        | OpenDPCostRequest
        | PolarsCostRequest
        | DiffPrivLibCostRequest
        | SynthCostRequest
    ]
):
    """A query to price, by engine."""

    root: (
        SqlCostRequest
        | OpenDPCostRequest
        | PolarsCostRequest
        | DiffPrivLibCostRequest
        | SynthCostRequest
    ) = Field(discriminator="engine")


class QueryRequest(
    RootModel[
        SqlQueryRequest
        | OpenDPQueryRequest
        | PolarsQueryRequest
        | DiffPrivLibQueryRequest
        | SynthQueryRequest
    ]
):
    """A query to run, by engine."""

    root: (
        SqlQueryRequest
        | OpenDPQueryRequest
        | PolarsQueryRequest
        | DiffPrivLibQueryRequest
        | SynthQueryRequest
    ) = Field(discriminator="engine")


class CostEstimate(Response):
    """The price of a query (from the metadata only)."""

    dataset: str
    engine: str
    cost: Cost
    accuracy: StatedAccuracy


class PlanRequest(Request):
    """A workload to price: each query's body as for /cost (no query_id)."""

    queries: list[CostRequest] = Field(min_length=1, max_length=100)
    level: float = Field(
        default=0.95, ge=0.5, le=0.999999, description="the accuracy's level (per query too)"
    )


class PlannedQuery(Response):
    """One planned query: its price and accuracy, and whether one query may cost that."""

    engine: str
    cost: Cost
    accuracy: StatedAccuracy
    within_query_cap: bool


class PlanFits(Response):
    """Whether the plan's total fits what the caller can spend."""

    grant: bool = Field(description="total within the grant's remaining budget")
    cap: bool | None = Field(description="total within the dataset cap's remaining; null: none")
    query_cap: bool = Field(description="every query within the per-query cap")
    all: bool


class Plan(Response):
    """The price and accuracy of a workload (metadata only, nothing debited)."""

    dataset: str
    level: float
    queries: list[PlannedQuery]
    total: Cost = Field(description="basic composition: the exact sum of the charges")
    remaining: Cost = Field(description="the grant's remaining budget")
    cap_remaining: Cost | None = Field(description="what the dataset cap has left, or null")
    fits: PlanFits


class QueryResponse(Response):
    """A release (or the stored answer of a replayed ``query_id``)."""

    query_id: str
    dataset: str
    engine: str
    dummy: bool
    replayed: bool
    reused: bool = Field(
        default=False, description="an earlier identical release returned free (reuse: true)"
    )
    cost: Cost
    created_at: Timestamp
    result: Result
    accuracy: StatedAccuracy | Absent = Field(
        default=None, description="the release's accuracy (from the request and metadata)"
    )


class QueryRecord(Response):
    """One archived query of the caller."""

    query_id: str
    dataset: str
    engine: str
    state: QueryState
    request: dict[str, Any] = Field(description="the query body without query_id")
    cost: Cost
    created_at: Timestamp
    finished_at: Timestamp | None
    result: Result | None
    error: Error | None
    accuracy: StatedAccuracy | None = Field(
        default=None,
        description="the accuracy stated when the query was reserved (null on older records)",
    )
    phase: QueryPhase | None = Field(
        description="where a running query's work is; null once settled"
    )
    progress: float | None = Field(
        ge=0, le=1, description="the fraction done, when the engine knows it; else null"
    )


class HistoryParams(Request):
    """Query parameters of the history route."""

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | Absent = None


class QueryHistory(Response):
    """A page of the caller's archive, newest first."""

    queries: list[QueryRecord]
    next_cursor: str | None = Field(description="pass back as cursor for the next page")


class Health(Response):
    """Liveness."""

    status: str
    version: str


# --- operations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """One route: its models and the error statuses it adds to those of every route."""

    method: str
    path: str
    operation_id: str
    summary: str
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    params: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    authenticated: bool = True
    accepted: type[BaseModel] | None = None  # the body of a 202 (the query runs as a job)
    # the console's static assets: text/html, ... (an asset route names every type it serves)
    media: tuple[str, ...] = ("application/json",)


AUTH_ERRORS = (401, 403, 404, 429, 500)
NAME = "/v1/datasets/{name}"
OPERATIONS = (
    Operation("get", "/health", "health", "Liveness (no authentication)", Health,
              authenticated=False),
    Operation("get", "/v1/openapi.json", "openapi", "This document (no authentication)", None,
              authenticated=False),
    Operation("get", "/console", "console", "The researcher console's page (no authentication)",
              None, authenticated=False, media=("text/html",), errors=(404,)),
    Operation("get", "/console/{asset}", "consoleAsset",
              "The console's script or stylesheet (no authentication)", None,
              authenticated=False, media=("text/javascript", "text/css"), errors=(404,)),
    Operation("get", "/v1/datasets", "listDatasets", "Datasets the caller holds a grant on",
              DatasetList),
    Operation("get", f"{NAME}/metadata", "getMetadata", "Public metadata of a dataset",
              DatasetMetadata, errors=(400,)),
    Operation("get", f"{NAME}/dummy", "getDummy", "Dummy rows generated from the metadata only",
              DummyTable, params=DummyParams, errors=(400, 503)),
    Operation("get", f"{NAME}/budget", "getBudget", "Initial, spent and remaining budget",
              Budget, errors=(400,)),
    Operation("post", f"{NAME}/cost", "estimateCost",
              "Price of a query (metadata only, no debit)", CostEstimate, body=CostRequest,
              errors=(400, 413, 422, 503)),
    Operation("post", f"{NAME}/plan", "planWorkload",
              "Price and accuracy of a list of queries (metadata only, no debit)", Plan,
              body=PlanRequest, errors=(400, 413, 422, 503)),
    Operation("post", f"{NAME}/queries", "runQuery",
              "Run a query (debits the grant unless dummy)", QueryResponse, body=QueryRequest,
              errors=(400, 409, 413, 422, 503), accepted=QueryRecord),
    Operation("get", f"{NAME}/queries", "listQueries",
              "The caller's archive on this dataset, newest first", QueryHistory,
              params=HistoryParams, errors=(400,)),
    Operation("get", f"{NAME}/queries/{{query_id}}", "getQuery",
              "One archived query and its released result", QueryRecord, errors=(400,)),
)  # fmt: skip

# What each error status means; the codes listed with it come from chalicelib/errors.py.
WHEN = {
    400: "invalid request or query",
    401: "missing, malformed or unknown API token",
    403: "token revoked or expired, user disabled, no grant on the dataset, or the query "
    "costs more than one query may on this dataset",
    404: "unknown dataset, query or console asset",
    409: "budget exhausted, query_id conflict, query in progress or failed",
    413: "request body too large",
    422: "the engine refused the query, or its result is over NEBLINA_MAX_RESULT_BYTES and "
    "was not released (the cost stands)",
    429: "rate limited: too many query and cost requests (see Retry-After)",
    500: "internal error",
    503: "the dataset's source cannot be read (the cost was refunded; not worth retrying "
    "until the source is fixed), or the engine's worker could not be reached (nothing "
    "charged; retry)",
}


def error_codes() -> dict[int, list[str]]:
    """The stable error codes of ``chalicelib.errors``, by HTTP status."""
    codes: dict[int, set[str]] = {}
    for cls in vars(errors).values():
        # errors.Conflict is the abstract base of the 409s: no answer carries its code
        if (
            isinstance(cls, type)
            and issubclass(cls, errors.NeblinaError)
            and cls is not errors.Conflict
            and not issubclass(cls, errors.StorageError)  # admin only, never an answer
        ):
            codes.setdefault(cls.status_code, set()).add(cls.code)
    return {status: sorted(found) for status, found in sorted(codes.items())}


# --- generation ------------------------------------------------------------------------
class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema without per-field titles (clients name things by component)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _without_null_defaults(node: Any) -> Any:
    """Drop ``"default": null`` from fields that are left out rather than sent as null."""
    if isinstance(node, dict):
        return {
            key: _without_null_defaults(value)
            for key, value in node.items()
            if not (key == "default" and value is None)
        }
    if isinstance(node, list):
        return [_without_null_defaults(value) for value in node]
    return node


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    properties = model.model_json_schema(schema_generator=_Schemas)["properties"]
    return [
        {"name": name, "in": "query", "required": False, "schema": _without_null_defaults(schema)}
        for name, schema in properties.items()
    ]


def _operation(operation: Operation, codes: dict[int, list[str]]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if operation.response is not None:
        ok["content"] = _json({"$ref": REF.format(model=operation.response.__name__)})
    elif operation.media != ("application/json",):
        ok["content"] = {media: {"schema": {"type": "string"}} for media in operation.media}
    else:
        ok["content"] = _json({"type": "object"})
    responses: dict[str, Any] = {"200": ok}
    if operation.accepted is not None:
        responses["202"] = {
            "description": (
                'Accepted: the query runs as a job ("wait": false); the body is its record '
                "(state running, phase queued); poll the Location until done or failed"
            ),
            "content": _json({"$ref": REF.format(model=operation.accepted.__name__)}),
            "headers": {
                "Location": {
                    "description": "the query's record: /v1/datasets/{name}/queries/{query_id}",
                    "schema": {"type": "string"},
                }
            },
        }
    statuses = (*AUTH_ERRORS, *operation.errors) if operation.authenticated else operation.errors
    for status in sorted(statuses):
        listed = ", ".join(f"`{code}`" for code in codes.get(status, ()))
        response: dict[str, Any] = {
            "description": f"{WHEN[status]} ({listed})",
            "content": _json({"$ref": REF.format(model="Error")}),
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "seconds until the user's rate-limit window ends",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        responses[str(status)] = response
    result: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
    }
    if operation.params is not None:
        result["parameters"] = _parameters(operation.params)
    if operation.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": _json({"$ref": REF.format(model=operation.body.__name__)}),
        }
    result["responses"] = responses
    if operation.authenticated:
        result["security"] = [{"bearerToken": []}]
    return result


def _path_parameters(path: str) -> list[dict[str, Any]]:
    found = []
    if "{name}" in path:
        schema = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"}
        found.append({"name": "name", "in": "path", "required": True, "schema": schema})
    if "{query_id}" in path:
        schema = {"type": "string"}
        found.append({"name": "query_id", "in": "path", "required": True, "schema": schema})
    if "{asset}" in path:
        assets: dict[str, Any] = {"type": "string", "enum": ["console.js", "console.css"]}
        found.append({"name": "asset", "in": "path", "required": True, "schema": assets})
    return found


def generate(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document, from the models and operations above."""
    models = [op.response for op in OPERATIONS if op.response is not None]
    models += [op.body for op in OPERATIONS if op.body is not None]
    models.append(Error)
    unique = list(dict.fromkeys(models))
    _, definitions = models_json_schema(
        [(model, "validation") for model in unique],
        ref_template=REF,
        schema_generator=_Schemas,
    )
    codes = error_codes()
    paths: dict[str, Any] = {}
    for operation in OPERATIONS:
        item = paths.setdefault(operation.path, {})
        if "parameters" not in item and _path_parameters(operation.path):
            item["parameters"] = _path_parameters(operation.path)
        item[operation.method] = _operation(operation, codes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Neblina API",
            "description": "Remote data science under differential privacy. See docs/api.md.",
            "version": version,
        },
        "components": {
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "nbl_<43 chars>",
                }
            },
            "schemas": _without_null_defaults(dict(sorted(definitions["$defs"].items()))),
        },
        "paths": paths,
    }


def render(version: str) -> str:
    """The document as the committed file holds it."""
    return json.dumps(generate(version), indent=1, sort_keys=False) + "\n"


def main() -> None:
    """Write ``chalicelib/openapi.json``."""
    DOCUMENT_PATH.write_text(render(VERSION))
    print(f"wrote {DOCUMENT_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
