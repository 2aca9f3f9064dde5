"""One engine worker as a local process, behind the Lambda Invoke HTTP API.

    python localstack/workerserver.py --worker sql --port 0    # prints "worker sql ready on URL"

Serves ``POST /2015-03-31/functions/{name}/invocations`` (the route boto3's Lambda
``invoke`` calls) around :func:`chalicelib.worker.lambda_handler`, the handler of every
worker Lambda, so the front's :class:`~chalicelib.hop.LambdaWorkers` runs the same boto3
code locally as on AWS (its ``NEBLINA_WORKERS`` entry gives this server as ``endpoint``):

- ``X-Amz-Invocation-Type: RequestResponse`` (the default): 200 with the handler's answer;
  if the handler raises, 200 with ``X-Amz-Function-Error: Unhandled``, as Lambda does;
- ``Event``: 202 at once, and the handler runs on a thread of this process;
- a function name other than ``neblina-worker-{family}``: 404 ``ResourceNotFoundException``.

Only 127.0.0.1; one thread per connection (``ThreadingHTTPServer``), as a Lambda function
runs concurrent invocations side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INVOKE = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
log = logging.getLogger("neblina.workerserver")


def function_name(family: str) -> str:
    """The Lambda function name of a worker family (as in Terraform)."""
    return f"neblina-worker-{family}"


def build_server(
    family: str, host: str, port: int, function: str | None = None
) -> ThreadingHTTPServer:
    """The Invoke API of the ``family`` worker on ``host:port``, answering to ``function``
    (default :func:`function_name`; a Terraform deployment's names differ)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ["NEBLINA_WORKER"] = family
    from urllib.parse import unquote

    from chalicelib.worker import lambda_handler

    expected = function or function_name(family)

    def invoke(event: Any) -> tuple[bytes, dict[str, str]]:
        try:
            return json.dumps(lambda_handler(event, None)).encode(), {}
        except Exception as exc:  # Lambda's answer for a handler that raised
            log.exception("worker %s: the handler raised", family)
            body = {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "stackTrace": traceback.format_exc().splitlines(),
            }
            return json.dumps(body).encode(), {"X-Amz-Function-Error": "Unhandled"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            match = INVOKE.match(self.path.split("?")[0])
            if match is None or unquote(match.group(1)) != expected:
                error = {"Type": "User", "message": f"Function not found: {self.path}"}
                self._answer(
                    404,
                    json.dumps(error).encode(),
                    {"X-Amzn-ErrorType": "ResourceNotFoundException"},
                )
                return
            try:
                event = json.loads(raw or b"{}")
            except ValueError:
                error = {"Type": "User", "message": "Could not parse request body into json"}
                self._answer(
                    400, json.dumps(error).encode(), {"X-Amzn-ErrorType": "InvalidRequestContent"}
                )
                return
            kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
            if kind == "Event":
                threading.Thread(target=invoke, args=(event,), daemon=True).start()
                self._answer(202, b"", {})
                return
            body, headers = invoke(event)
            self._answer(200, body, {"X-Amz-Executed-Version": "$LATEST", **headers})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    return Server((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", required=True, help="the worker family (sql, opendp, ...)")
    parser.add_argument(
        "--function-name",
        help="the function name it answers to (default neblina-worker-FAMILY; for a Terraform "
        "deployment, its output worker_function_names)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("NEBLINA_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s %(levelname)s worker-{args.worker} %(name)s: %(message)s",
    )
    try:
        server = build_server(args.worker, args.host, args.port, args.function_name)
    except OSError as exc:
        print(f"worker: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"worker {args.worker} ready on http://{host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
