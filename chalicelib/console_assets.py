"""The researcher console's static assets (chalicelib/console/), served by the front.

The console is one HTML page, one JS module and one stylesheet, served by the same app as
the API (same origin, no third-party origin at run time). Every answer carries a strict
Content-Security-Policy (``default-src 'self'``, no ``unsafe-inline``, no framing), so that
even a value that slipped into the page as markup could run no script. The JS renders every
value from the data or the metadata with ``textContent`` (docs/console.md).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from chalicelib.errors import NotFound

ASSET_DIR = Path(__file__).resolve().parent / "console"

# name -> content type; nothing else under chalicelib/console/ is ever served.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> str:
    return (ASSET_DIR / name).read_text(encoding="utf-8")


def asset(name: str) -> tuple[str, dict[str, str]]:
    """The asset's text and its headers; an unknown name is a 404 ``not_found``."""
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound("no such console asset")
    return _read(name), {"Content-Type": content_type, **SECURITY_HEADERS}
