"""The embedded AWS emulator: moto's WSGI app served single-threaded on 127.0.0.1:4566.

Why single-threaded: the stock ``moto_server`` serves requests on several threads and moto
has no per-request lock, so concurrent conditional updates of one DynamoDB item lose writes
(measured: 1004 successful debits of 1 against a budget of 1000). Served by one thread,
every request is applied whole, one after the other, as DynamoDB itself guarantees.

Usage: ``python localstack/emulator.py [--host 127.0.0.1] [--port 4566]``. It prints
``emulator ready on http://HOST:PORT`` once it accepts connections and exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


def build_server(host: str, port: int) -> BaseWSGIServer:
    """A single-threaded WSGI server around moto's multi-service dispatcher."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    class QuietHandler(MotoRequestHandler):  # type: ignore[misc]
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # one line per AWS call would drown everything else

    app = DomainDispatcherApplication(create_backend_app)
    return make_server(host, port, app, threaded=False, request_handler=QuietHandler)


class EmulatorThread:
    """The emulator in a background thread of this process (for tests and benchmarks)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = build_server(host, port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> EmulatorThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args(argv)
    try:
        server = build_server(args.host, args.port)
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"emulator ready on http://{host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
