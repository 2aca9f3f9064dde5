"""The OpenAPI 3.0 document served at ``/v1/openapi.json`` (kept in step with docs/api.md)."""

from __future__ import annotations

import copy
from typing import Any

DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "description": "exact decimal"}
COST = {
    "type": "object",
    "required": ["epsilon", "delta"],
    "properties": {"epsilon": DECIMAL, "delta": DECIMAL},
    "additionalProperties": False,
}
AMOUNT = {
    "oneOf": [{"type": "number"}, {"type": "string", "pattern": r"^[0-9.eE+-]+$"}],
}
TABLE = {
    "type": "object",
    "required": ["type", "columns", "dtypes", "records"],
    "properties": {
        "type": {"type": "string", "enum": ["table"]},
        "columns": {"type": "array", "items": {"type": "string"}},
        "dtypes": {"type": "object", "additionalProperties": {"type": "string"}},
        "records": {"type": "array", "items": {"type": "object"}},
    },
}
VALUE = {
    "type": "object",
    "description": "an OpenDP release: a number, or a (possibly nested) list of numbers",
    "required": ["type", "value"],
    "properties": {
        "type": {"type": "string", "enum": ["value"]},
        "value": {"nullable": True},
    },
}
RESULT = {"oneOf": [TABLE, VALUE], "nullable": True}
ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
MECHANISMS = {
    "type": "object",
    "description": "override of SmartNoise's mechanism per statistic",
    "properties": {
        stat: {"type": "string", "enum": ["laplace", "geometric", "discrete_laplace", "gaussian"]}
        for stat in [
            "count",
            "sum_int",
            "sum_large_int",
            "sum_float",
            "sum_large_float",
            "threshold",
        ]
    },
    "additionalProperties": False,
}
SQL_FIELDS: dict[str, Any] = {
    "engine": {"type": "string", "enum": ["smartnoise_sql"]},
    "query": {"type": "string", "minLength": 1, "maxLength": 10000},
    "epsilon": AMOUNT,
    "delta": AMOUNT,
    "mechanisms": MECHANISMS,
}
SQL_COST_REQUEST = {
    "type": "object",
    "required": ["engine", "query", "epsilon", "delta"],
    "properties": SQL_FIELDS,
    "additionalProperties": False,
}
QUERY_FIELDS: dict[str, Any] = {
    "query_id": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{8,64}$"},
    "dummy": {"type": "boolean", "default": False},
    "dummy_rows": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 100},
    "dummy_seed": {"type": "integer", "minimum": 0, "maximum": 4294967295, "default": 42},
}
SQL_QUERY_REQUEST = {
    "type": "object",
    "required": ["engine", "query_id", "query", "epsilon", "delta"],
    "properties": {
        **SQL_FIELDS,
        **QUERY_FIELDS,
        "postprocess": {"type": "boolean", "default": True},
    },
    "additionalProperties": False,
}
OPENDP_PIPELINE = {
    "description": (
        "an OpenDP Measurement: dp.serialize's JSON text, or the same JSON with repeated "
        'calls written once, {"nodes": [...]} where {"__ref__": i} stands for node i and '
        "the last node is the pipeline (see docs/opendp.md)"
    ),
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "required": ["nodes"],
            "properties": {"nodes": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
            "additionalProperties": False,
        },
    ],
}
OPENDP_FIELDS: dict[str, Any] = {
    "engine": {"type": "string", "enum": ["opendp"]},
    "pipeline": OPENDP_PIPELINE,
    "fixed_delta": {
        **AMOUNT,
        "description": "required for zCDP and smoothed max divergence, refused otherwise",
    },
}
OPENDP_COST_REQUEST = {
    "type": "object",
    "required": ["engine", "pipeline"],
    "properties": OPENDP_FIELDS,
    "additionalProperties": False,
}
OPENDP_QUERY_REQUEST = {
    "type": "object",
    "required": ["engine", "query_id", "pipeline"],
    "properties": {**OPENDP_FIELDS, **QUERY_FIELDS},
    "additionalProperties": False,
}


def _by_engine(sql: str, opendp: str) -> dict[str, Any]:
    refs = {
        "smartnoise_sql": f"#/components/schemas/{sql}",
        "opendp": f"#/components/schemas/{opendp}",
    }
    return {
        "oneOf": [{"$ref": ref} for ref in refs.values()],
        "discriminator": {"propertyName": "engine", "mapping": refs},
    }


COST_REQUEST = _by_engine("SqlCostRequest", "OpenDPCostRequest")
QUERY_REQUEST = _by_engine("SqlQueryRequest", "OpenDPQueryRequest")
TIMESTAMP = {"type": "string", "format": "date-time"}
QUERY_RESPONSE = {
    "type": "object",
    "required": [
        "query_id",
        "dataset",
        "engine",
        "dummy",
        "replayed",
        "cost",
        "created_at",
        "result",
    ],
    "properties": {
        "query_id": {"type": "string"},
        "dataset": {"type": "string"},
        "engine": {"type": "string"},
        "dummy": {"type": "boolean"},
        "replayed": {"type": "boolean"},
        "cost": COST,
        "created_at": TIMESTAMP,
        "result": RESULT,
    },
}
RECORD = {
    "type": "object",
    "required": [
        "query_id",
        "dataset",
        "engine",
        "state",
        "request",
        "cost",
        "created_at",
        "finished_at",
        "result",
        "error",
    ],
    "properties": {
        "query_id": {"type": "string"},
        "dataset": {"type": "string"},
        "engine": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "done", "failed", "refunded"]},
        "request": {"type": "object"},
        "cost": COST,
        "created_at": TIMESTAMP,
        "finished_at": {**TIMESTAMP, "nullable": True},
        "result": RESULT,
        "error": {**ERROR, "nullable": True},
    },
}
COLUMN = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["string", "int", "float", "boolean", "datetime"]},
        "nullable": {"type": "boolean"},
        "private_id": {"type": "boolean"},
        "lower": {},
        "upper": {},
        "categories": {"type": "array"},
        "cardinality": {"type": "integer"},
        "precision": {"type": "integer", "enum": [32, 64]},
    },
}
METADATA = {
    "type": "object",
    "required": ["max_ids", "rows", "row_privacy", "censor_dims", "columns"],
    "properties": {
        "max_ids": {"type": "integer", "minimum": 1},
        "rows": {"type": "integer", "minimum": 1},
        "row_privacy": {"type": "boolean"},
        "censor_dims": {"type": "boolean"},
        "description": {"type": "string"},
        "columns": {"type": "object", "additionalProperties": COLUMN},
    },
}

_ERRORS_BY_STATUS = {
    "400": "invalid request or query",
    "401": "missing, malformed or unknown API token",
    "403": (
        "token revoked or expired, user disabled, no grant on the dataset, or "
        "(query_cap_exceeded) the query costs more than one query may on this dataset"
    ),
    "404": "unknown dataset or query",
    "409": "budget exhausted, query_id conflict, query in progress or failed",
    "413": "request body too large",
    "422": (
        "the engine refused the query, or (result_too_large) its result is over "
        "NEBLINA_MAX_RESULT_BYTES and was not released (the cost stands)"
    ),
    "429": "rate limited: too many query and cost requests (see Retry-After)",
    "500": "internal error",
}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds until the user's rate-limit window ends",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _errors(*statuses: str) -> dict[str, Any]:
    responses = {
        status: _ok({"$ref": "#/components/schemas/Error"}, _ERRORS_BY_STATUS[status])
        for status in statuses
    }
    if "429" in responses:
        responses["429"]["headers"] = RETRY_AFTER
    return responses


NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
}
AUTH_ERRORS = ("401", "403", "404", "429", "500")


def _authed(operation: dict[str, Any], *statuses: str) -> dict[str, Any]:
    responses = {**operation["responses"], **_errors(*AUTH_ERRORS, *statuses)}
    return {**operation, "security": [{"bearerToken": []}], "responses": responses}


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Neblina API",
        "description": "Remote data science under differential privacy. See docs/api.md.",
    },
    "components": {
        "securitySchemes": {
            "bearerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "nbl_<43 chars>"}
        },
        "schemas": {
            "Error": ERROR,
            "Cost": COST,
            "Table": TABLE,
            "Value": VALUE,
            "CostRequest": COST_REQUEST,
            "QueryRequest": QUERY_REQUEST,
            "SqlCostRequest": SQL_COST_REQUEST,
            "SqlQueryRequest": SQL_QUERY_REQUEST,
            "OpenDPCostRequest": OPENDP_COST_REQUEST,
            "OpenDPQueryRequest": OPENDP_QUERY_REQUEST,
            "QueryResponse": QUERY_RESPONSE,
            "QueryRecord": RECORD,
            "Metadata": METADATA,
        },
    },
    "paths": {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness (no authentication)",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "required": ["status", "version"],
                            "properties": {
                                "status": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        }
                    )
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (no authentication)",
                "responses": {"200": _ok({"type": "object"})},
            }
        },
        "/v1/datasets": {
            "get": _authed(
                {
                    "operationId": "listDatasets",
                    "summary": "Datasets the caller holds a grant on",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["datasets"],
                                "properties": {
                                    "datasets": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "description", "rows"],
                                            "properties": {
                                                "name": {"type": "string"},
                                                "description": {"type": "string"},
                                                "rows": {"type": "integer"},
                                            },
                                        },
                                    }
                                },
                            }
                        )
                    },
                }
            )
        },
        "/v1/datasets/{name}/metadata": {
            "parameters": [NAME_PARAM],
            "get": _authed(
                {
                    "operationId": "getMetadata",
                    "summary": "Public metadata of a dataset",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["dataset", "metadata"],
                                "properties": {
                                    "dataset": {"type": "string"},
                                    "metadata": {"$ref": "#/components/schemas/Metadata"},
                                },
                            }
                        )
                    },
                },
                "400",
            ),
        },
        "/v1/datasets/{name}/dummy": {
            "parameters": [NAME_PARAM],
            "get": _authed(
                {
                    "operationId": "getDummy",
                    "summary": "Dummy rows generated from the metadata only",
                    "parameters": [
                        {
                            "name": "rows",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
                        },
                        {
                            "name": "seed",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                        },
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["dataset", "rows", "seed", "table"],
                                "properties": {
                                    "dataset": {"type": "string"},
                                    "rows": {"type": "integer"},
                                    "seed": {"type": "integer"},
                                    "table": {"$ref": "#/components/schemas/Table"},
                                },
                            }
                        )
                    },
                },
                "400",
            ),
        },
        "/v1/datasets/{name}/budget": {
            "parameters": [NAME_PARAM],
            "get": _authed(
                {
                    "operationId": "getBudget",
                    "summary": "Initial, spent and remaining budget",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["dataset", "initial", "spent", "remaining"],
                                "properties": {
                                    "dataset": {"type": "string"},
                                    "initial": COST,
                                    "spent": COST,
                                    "remaining": COST,
                                },
                            }
                        )
                    },
                },
                "400",
            ),
        },
        "/v1/datasets/{name}/cost": {
            "parameters": [NAME_PARAM],
            "post": _authed(
                {
                    "operationId": "estimateCost",
                    "summary": "Price of a query (metadata only, no debit)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CostRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["dataset", "engine", "cost"],
                                "properties": {
                                    "dataset": {"type": "string"},
                                    "engine": {"type": "string"},
                                    "cost": COST,
                                },
                            }
                        )
                    },
                },
                "400",
                "413",
                "422",
            ),
        },
        "/v1/datasets/{name}/queries": {
            "parameters": [NAME_PARAM],
            "post": _authed(
                {
                    "operationId": "runQuery",
                    "summary": "Run a query (debits the grant unless dummy)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/QueryRequest"}
                            }
                        },
                    },
                    "responses": {"200": _ok({"$ref": "#/components/schemas/QueryResponse"})},
                },
                "400",
                "409",
                "413",
                "422",
            ),
            "get": _authed(
                {
                    "operationId": "listQueries",
                    "summary": "The caller's archive on this dataset, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["queries", "next_cursor"],
                                "properties": {
                                    "queries": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/QueryRecord"},
                                    },
                                    "next_cursor": {"type": "string", "nullable": True},
                                },
                            }
                        )
                    },
                },
                "400",
            ),
        },
        "/v1/datasets/{name}/queries/{query_id}": {
            "parameters": [
                NAME_PARAM,
                {"name": "query_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": _authed(
                {
                    "operationId": "getQuery",
                    "summary": "One archived query and its released result",
                    "responses": {"200": _ok({"$ref": "#/components/schemas/QueryRecord"})},
                },
                "400",
            ),
        },
    },
}


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document, with the server's version."""
    doc = copy.deepcopy(_DOCUMENT)
    doc["info"]["version"] = version
    return doc
