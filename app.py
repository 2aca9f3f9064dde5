"""Neblina's REST API: routes, the token authorizer, and the one error-to-HTTP mapping.

Nothing heavy is imported at module level: the authorizer Lambda imports this file too and
must stay free of pandas and the DP libraries. The service (and through it the engines) is
imported on the first request that needs it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from chalice.app import AuthResponse, Chalice, Request, Response

from chalicelib import VERSION
from chalicelib.config import AUTHORIZER_TTL_SECONDS, get_settings
from chalicelib.errors import InternalError, InvalidRequest, NeblinaError, PayloadTooLarge

if TYPE_CHECKING:
    from chalicelib.service import Service


app = Chalice(app_name="neblina")
app.log.setLevel(os.environ.get("NEBLINA_LOG_LEVEL", "INFO"))
log = logging.getLogger("neblina.api")


_SERVICE: list[Service] = []
_SERVICE_LOCK = threading.Lock()


def get_service() -> Service:
    """The service, built once on first use (imports the storage backend and dataset loader).

    Built under a lock: with a threaded local server, concurrent first requests would
    otherwise each build a service with its own dataset cache and load every dataset again.
    """
    if not _SERVICE:
        with _SERVICE_LOCK:
            if not _SERVICE:
                from chalicelib.deps import build_service

                _SERVICE.append(build_service(get_settings()))
    return _SERVICE[0]


# --- errors: the only place that turns exceptions into HTTP ------------------------------
def error_response(error: NeblinaError) -> Response:
    """``{"error": code, "message": message}`` with the error's status and headers."""
    return Response(
        body={"error": error.code, "message": error.message},
        status_code=error.status_code,
        headers={"Content-Type": "application/json", **error.headers()},
    )


def handle(view: Callable[[], Any]) -> Response:
    """Run a view; map Neblina errors to their status, anything else to a bare 500.

    A view's answer is 200, or 202 with a ``Location`` when the service accepted a job.
    """
    try:
        answer = view()
        accepted = getattr(answer, "location", None)
        if accepted is not None:
            headers: dict[str, str | list[str]] = {
                "Location": str(accepted),
                "Content-Type": "application/json",
            }
            return Response(body=answer.body, status_code=202, headers=headers)
        return Response(body=answer, status_code=200)
    except NeblinaError as error:
        if error.status_code >= 500:
            log.exception("internal error")
        return error_response(error)
    except Exception:
        log.exception("unhandled error")
        return error_response(InternalError())


# --- authentication ------------------------------------------------------------------
@app.authorizer(ttl_seconds=AUTHORIZER_TTL_SECONDS)
def token_authorizer(auth_request: Any) -> Any:
    """API Gateway TOKEN authorizer: the token's user becomes the principal.

    API Gateway reuses its answer for a token for ``AUTHORIZER_TTL_SECONDS`` (the local API
    server does the same): a warm request makes no store call here, and a revoked or expired
    token or a disabled user is refused at most that long after the change
    (docs/threat-model.md).

    Unknown or malformed tokens raise ``Unauthorized`` (API Gateway answers 401); revoked
    or expired tokens and disabled users get an explicit Deny (403) whose context carries
    the error code and message for the gateway response template.
    """
    from chalicelib.auth import authenticate
    from chalicelib.errors import Forbidden, Unauthorized
    from chalicelib.storage import get_store

    try:
        user = authenticate(get_store(), auth_request.token)
    except Unauthorized:
        raise Exception("Unauthorized") from None
    except Forbidden as error:
        return {
            "principalId": "anonymous",
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Action": "execute-api:Invoke",
                        "Effect": "Deny",
                        "Resource": [auth_request.method_arn],
                    }
                ],
            },
            "context": {"error": error.code, "message": error.message},
        }
    return AuthResponse(routes=["*"], principal_id=user.user_id)


def current_request() -> Request:
    """The request being served (Chalice sets it before calling a route)."""
    request = app.current_request
    if request is None:
        raise InternalError()
    return request


def caller() -> str:
    """The authenticated user id (set by the authorizer)."""
    context = current_request().context.get("authorizer") or {}
    principal = context.get("principalId")
    if not principal:
        raise InternalError()
    return str(principal)


def json_body() -> Any:
    """The request body as JSON: 413 over the size limit, 400 when malformed."""
    raw = current_request().raw_body or b""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > get_settings().max_body_bytes:
        raise PayloadTooLarge(f"request body larger than {get_settings().max_body_bytes} bytes")
    if not raw:
        raise InvalidRequest("a JSON body is required")
    from chalicelib.validation import json_document

    return json_document(raw)


def query_param(name: str) -> str | None:
    """One query-string parameter, or None."""
    params: Mapping[str, Any] = current_request().query_params or {}
    value = params.get(name)
    return None if value is None else str(value)


# --- routes --------------------------------------------------------------------------
@app.route("/health", methods=["GET"])
def health() -> Response:
    return handle(lambda: {"status": "ok", "version": VERSION})


@app.route("/console", methods=["GET"])
def console_page() -> Response:
    """The researcher console (docs/console.md); public: it holds no data, the API does."""
    return console_response("index.html")


@app.route("/console/{asset}", methods=["GET"])
def console_asset(asset: str) -> Response:
    return console_response(asset)


def console_response(name: str) -> Response:
    from chalicelib.console_assets import asset

    try:
        body, headers = asset(name)
    except NeblinaError as error:
        return error_response(error)
    response_headers: dict[str, str | list[str]] = {**headers}
    return Response(body=body, status_code=200, headers=response_headers)


@app.route("/v1/openapi.json", methods=["GET"])
def openapi() -> Response:
    from chalicelib.openapi import document

    return handle(lambda: document(VERSION))


@app.route("/v1/datasets", methods=["GET"], authorizer=token_authorizer)
def list_datasets() -> Response:
    return handle(lambda: get_service().list_datasets(caller()))


@app.route("/v1/datasets/{name}/metadata", methods=["GET"], authorizer=token_authorizer)
def metadata(name: str) -> Response:
    return handle(lambda: get_service().metadata(caller(), name))


@app.route("/v1/datasets/{name}/dummy", methods=["GET"], authorizer=token_authorizer)
def dummy(name: str) -> Response:
    return handle(
        lambda: get_service().dummy(caller(), name, query_param("rows"), query_param("seed"))
    )


@app.route("/v1/datasets/{name}/budget", methods=["GET"], authorizer=token_authorizer)
def budget(name: str) -> Response:
    return handle(lambda: get_service().budget(caller(), name))


@app.route("/v1/datasets/{name}/cost", methods=["POST"], authorizer=token_authorizer)
def cost(name: str) -> Response:
    return handle(lambda: get_service().cost(caller(), name, json_body()))


@app.route("/v1/datasets/{name}/plan", methods=["POST"], authorizer=token_authorizer)
def plan(name: str) -> Response:
    return handle(lambda: get_service().plan(caller(), name, json_body()))


@app.route("/v1/datasets/{name}/queries", methods=["POST"], authorizer=token_authorizer)
def run_query(name: str) -> Response:
    return handle(lambda: get_service().query(caller(), name, json_body()))


@app.route("/v1/datasets/{name}/queries", methods=["GET"], authorizer=token_authorizer)
def history(name: str) -> Response:
    return handle(
        lambda: get_service().history(caller(), name, query_param("limit"), query_param("cursor"))
    )


@app.route("/v1/datasets/{name}/queries/{query_id}", methods=["GET"], authorizer=token_authorizer)
def get_query(name: str, query_id: str) -> Response:
    return handle(lambda: get_service().get_query(caller(), name, query_id))
