"""Serve the Chalice app locally, as ``chalice local`` does, plus API Gateway's gateway responses.

``chalice local`` runs the same app and the same authorizer, but answers gateway-level
failures (no token, unknown route, authorizer deny) with API Gateway's default bodies. In
the cloud, Terraform configures *gateway responses* so those failures use Neblina's error
shape ``{"error", "message"}``; this launcher applies the same mapping, so clients and tests
see identical answers locally and on AWS:

==========================  ======  ==================================================
gateway event               status  body
==========================  ======  ==================================================
no/invalid token            401     ``unauthorized``, "missing or invalid API token"
authorizer Deny             403     the authorizer's context ``error`` and ``message``
unknown route               404     ``not_found``
==========================  ======  ==================================================

Like API Gateway, it also keeps the authorizer's answer for a token (Allow or Deny) for the
authorizer TTL (:data:`chalicelib.config.AUTHORIZER_TTL_SECONDS`, the value Terraform gives
API Gateway; ``NEBLINA_AUTHORIZER_TTL_SECONDS`` overrides it locally, 0 turns it off): a
warm request makes no store call to authenticate, and a revoked or expired token is refused
at most that long after the change (:class:`AuthorizerCache`).

Usage: ``python localstack/apiserver.py --port 8000`` (prints ``api ready on URL``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

UNAUTHORIZED_BODY = {"error": "unauthorized", "message": "missing or invalid API token"}
NOT_FOUND_BODY = {"error": "not_found", "message": "no such route"}


def _body(document: dict[str, str]) -> bytes:
    return json.dumps(document).encode()


def authorizer_ttl() -> float:
    """The authorizer TTL of this server: ``NEBLINA_AUTHORIZER_TTL_SECONDS``, else the one
    API Gateway is given (app.py, infra/terraform/apigateway.tf)."""
    raw = os.environ.get("NEBLINA_AUTHORIZER_TTL_SECONDS")
    if raw:
        return float(raw)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from chalicelib.config import AUTHORIZER_TTL_SECONDS

    return float(AUTHORIZER_TTL_SECONDS)


class AuthorizerCache:
    """API Gateway's authorizer result cache: the authorizer's answer for a token is reused
    for ``ttl`` seconds after it was computed, then asked again.

    Keyed by the SHA-256 of the ``Authorization`` value (no secret is kept). Answers
    (Allow and Deny) are kept; a raised ``Unauthorized`` (unknown or malformed token) is not.
    At most ``size`` tokens are kept (the least recently used goes first).
    """

    def __init__(
        self, ttl: float, clock: Callable[[], float] = time.monotonic, size: int = 10_000
    ) -> None:
        from chalicelib.lru import LruCache

        self.ttl = ttl
        self.clock = clock
        self._answers: LruCache[str, tuple[float, Any]] = LruCache(size)

    def answer(self, func: Callable[[Any], Any], auth_request: Any) -> Any:
        """``func(auth_request)``, or its answer for the same token less than ``ttl`` ago."""
        if self.ttl <= 0:
            return func(auth_request)
        key = hashlib.sha256(str(auth_request.token).encode()).hexdigest()
        now = self.clock()
        kept = self._answers.get(key)
        if kept is not None and now < kept[0]:
            return kept[1]
        result = func(auth_request)
        self._answers.put(key, (now + self.ttl, result))
        return result


def build_server(host: str, port: int) -> Any:
    """A chalice LocalDevServer for ``app.py`` with Neblina's gateway responses."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from chalice.app import ChaliceAuthorizer
    from chalice.config import Config
    from chalice.local import (
        ChaliceRequestHandler,
        ForbiddenError,
        LocalChalice,
        LocalDevServer,
        LocalGateway,
        LocalGatewayAuthorizer,
        NotAuthorizedError,
        ThreadedHTTPServer,
    )

    import app as app_module

    cache = AuthorizerCache(authorizer_ttl())

    class CachedAuthorizer(ChaliceAuthorizer):  # type: ignore[misc]
        """A route's authorizer behind the server's :class:`AuthorizerCache`."""

        def __init__(self, inner: Any) -> None:
            super().__init__(inner.name, lambda request: cache.answer(inner.func, request))
            self.config = inner.config
            self.scopes = inner.scopes

    class GatewayAuthorizer(LocalGatewayAuthorizer):  # type: ignore[misc]
        def _route_for_event(self, lambda_event: Any) -> Any:
            entry = super()._route_for_event(lambda_event)
            if entry is None or not isinstance(entry.authorizer, ChaliceAuthorizer):
                return entry
            entry = copy.copy(entry)
            entry.authorizer = CachedAuthorizer(entry.authorizer)
            return entry

        def authorize(self, raw_path: str, lambda_event: Any, lambda_context: Any) -> Any:
            headers = {"x-amzn-ErrorType": "UnauthorizedException"}
            try:
                return super().authorize(raw_path, lambda_event, lambda_context)
            except NotAuthorizedError:
                raise NotAuthorizedError(headers, _body(UNAUTHORIZED_BODY)) from None
            except ForbiddenError:
                raise  # handled by the gateway below (it knows the authorizer's context)
            except Exception as exc:
                if str(exc) == "Unauthorized":  # API Gateway's contract for TOKEN authorizers
                    raise NotAuthorizedError(headers, _body(UNAUTHORIZED_BODY)) from None
                raise

        def _check_can_invoke_view_function(self, arn: str, auth_result: Any) -> bool:
            allowed = bool(super()._check_can_invoke_view_function(arn, auth_result))
            if not allowed:
                context = auth_result.get("context") or {}
                body = {
                    "error": str(context.get("error", "forbidden")),
                    "message": str(context.get("message", "access denied")),
                }
                raise ForbiddenError({"x-amzn-ErrorType": "AccessDeniedException"}, _body(body))
            return True

    class Gateway(LocalGateway):  # type: ignore[misc]
        def __init__(self, app_object: Any, config: Any) -> None:
            super().__init__(app_object, config)
            self._authorizer = GatewayAuthorizer(app_object)

        def handle_request(self, method: str, path: str, headers: Any, body: Any) -> Any:
            try:
                self.event_converter.create_lambda_event(
                    method=method, path=path, headers=headers, body=body
                )
            except ValueError:
                raise ForbiddenError({}, _body(NOT_FOUND_BODY)) from None
            return super().handle_request(method, path, headers, body)

    class Handler(ChaliceRequestHandler):  # type: ignore[misc]
        def __init__(
            self, request: Any, client_address: Any, server: Any, app_object: Any, config: Any
        ) -> None:
            self._gateway_for = (app_object, config)
            super().__init__(request, client_address, server, app_object=app_object, config=config)

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local_gateway = Gateway(*self._gateway_for)

        def _send_error_response(self, error: Any) -> None:
            code = error.CODE
            if error.body == _body(NOT_FOUND_BODY):
                code = 404
            headers = {"Content-Type": "application/json"}
            self._send_http_response(code, headers, error.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the demo prints its own progress

    # The server runs one thread per connection. A plain Chalice app keeps the current
    # request in one attribute shared by every thread, so concurrent requests would read
    # each other's body and principal. `chalice local` swaps in LocalChalice, whose current
    # request is thread-local; do the same. (On Lambda one request runs at a time.)
    if not isinstance(app_module.app, LocalChalice):

        class ThreadLocalApp(LocalChalice, type(app_module.app)):  # type: ignore[misc]
            pass

        app_module.app.__class__ = ThreadLocalApp

    class Server(ThreadedHTTPServer):  # type: ignore[misc]
        # socketserver's default backlog is 5: when 32 clients connect at once the kernel
        # drops the extra SYNs and those clients wait 1 s, 3 s, 7 s... to retry.
        request_queue_size = 256

    config = Config.create(lambda_timeout=900, lambda_memory_size=3008)
    return LocalDevServer(
        app_module.app, config, host, port, handler_cls=Handler, server_cls=Server
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("NEBLINA_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        server = build_server(args.host, args.port)
    except OSError as exc:
        print(f"api: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server.server_address[:2]
    print(f"api ready on http://{host}:{port}", flush=True)
    server.server.serve_forever()
    server.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
