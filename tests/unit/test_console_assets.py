"""The console's static routes: public, strict headers, only the three assets, no inline script."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chalice.test import Client as ChaliceClient

import app
from chalicelib.console_assets import ASSET_DIR, ASSETS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # package_lambda: the table of packages


@pytest.fixture
def client() -> Iterator[ChaliceClient]:
    with ChaliceClient(app.app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ],
)
def test_each_asset_is_served_without_a_token_with_its_type_and_a_strict_policy(
    client: ChaliceClient, path: str, content_type: str
) -> None:
    answer = client.http.get(path)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == content_type
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("name", ["app.py", "..%2Fapp.py", "index.htm", "console_assets.py"])
def test_anything_but_the_three_assets_is_a_404_not_found(client: ChaliceClient, name: str) -> None:
    answer = client.http.get(f"/console/{name}")
    assert answer.status_code == 404
    assert answer.json_body["error"] == "not_found"


def test_the_page_has_no_inline_script_and_no_third_party_origin() -> None:
    html = (ASSET_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.DOTALL)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers
    for name in ASSETS:
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", (ASSET_DIR / name).read_text())


def test_the_script_never_writes_markup_nor_evaluates_strings() -> None:
    script = (ASSET_DIR / "console.js").read_text()
    for banned in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "document.cookie",
    ):
        assert banned not in script, banned


def test_the_front_package_ships_the_console_and_terraform_routes_it_without_the_authorizer() -> (
    None
):
    import package_lambda

    front = next(p for p in package_lambda.FUNCTIONS if p.name == "api")
    shipped = set(package_lambda.source_files(front))
    assert {f"chalicelib/console/{name}" for name in ASSETS} <= shipped
    assert "chalicelib/console_assets.py" in shipped
    terraform = (ROOT / "infra/terraform/apigateway.tf").read_text()
    assert re.search(r'"GET /console"\s+= false', terraform)
    assert re.search(r'"GET /console/\{asset\}"\s+= false', terraform)
