"""The researcher console in a real browser: Debian's chromium, driven headless by Playwright.

The stack is the suite's real local stack (emulator, API, workers on 127.0.0.1). The browser
is the system's ``chromium`` (``scripts/bootstrap`` installs it with apt-get where it can);
Playwright's own browser download is never used. Without a chromium, or without Playwright,
these tests skip and say why. ``NEBLINA_CONSOLE_SCREENSHOTS=1`` also writes the screenshots
of docs/img/ (docs/console.md).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "img"
XSS = "<img src=x onerror=alert(1)>"

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - bootstrap installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on this machine (scripts/bootstrap installs Debian's chromium "
        "with apt-get when run as root)",
    ),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(30_000)  # a worker's first query imports its engine
    expect.set_options(timeout=30_000)
    opened.on("console", lambda message: print("console:", message.text))
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    requests: list[str] = []
    opened.on("request", lambda request: requests.append(request.url))
    opened.requests = requests  # type: ignore[attr-defined]
    try:
        yield opened
    finally:
        context.close()


def shoot(page: Page, name: str) -> None:
    if os.environ.get("NEBLINA_CONSOLE_SCREENSHOTS") == "1":
        page.screenshot(path=str(SHOTS / name), full_page=True)


def sign_in(page: Page, api_url: str, token: str, dataset: str) -> None:
    page.goto(f"{api_url}/console")
    page.fill("#token", token)
    shoot(page, "console-signin.png") if dataset == "PENGUIN" else None
    page.click("#signin-button")
    page.click(f"#datasets button[data-name='{dataset}']")
    page.wait_for_selector("#metadata-columns tbody tr")


def budget(api_url: str, token: str, dataset: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{api_url}/v1/datasets/{dataset}/budget",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200
    return dict(answer.json())


def test_a_researcher_sees_the_price_before_running_and_is_charged_exactly_that(
    stack: Any, make_researcher: Any, page: Page
) -> None:
    researcher = make_researcher({"PENGUIN": ("10", "0.001")})
    sign_in(page, stack.api_url, researcher.token, "PENGUIN")

    sql = "SELECT species, COUNT(*) AS n FROM df GROUP BY species"
    page.fill("#sql", sql)
    page.fill("#epsilon", "0.75")
    expect(page.locator("#price")).to_have_text(re.compile(r"^ε \S+, δ \S+$"))
    shown = page.text_content("#price")
    assert shown is not None
    epsilon, delta = (part.split(" ")[1] for part in shown.split(", "))
    assert Decimal(epsilon) > 0
    # The accuracy of the count comes with the price (docs/api.md, "Accuracy").
    expect(page.locator("#accuracy table.accuracy tr", has_text="COUNT")).to_contain_text("±")

    page.click("#run-dummy")
    page.wait_for_selector("#result table tr td")
    assert "Dummy result" in (page.text_content("#run-message") or "")
    assert page.locator("#result table tr").count() == 4  # header + the 3 declared species
    assert budget(stack.api_url, researcher.token, "PENGUIN")["spent"]["epsilon"] == "0"
    shoot(page, "console-editor.png")

    page.click("#run-real")
    page.wait_for_selector("#confirm:not([hidden])")
    assert shown in (page.text_content("#confirm-text") or "")
    assert budget(stack.api_url, researcher.token, "PENGUIN")["spent"]["epsilon"] == "0"
    page.click("#confirm-yes")
    expect(page.locator("#run-message")).to_have_text(re.compile("^Released"))
    assert shown in (page.text_content("#run-message") or "")
    expect(page.locator("#result-accuracy table.accuracy")).to_contain_text("±")
    spent = budget(stack.api_url, researcher.token, "PENGUIN")["spent"]
    assert (Decimal(spent["epsilon"]), Decimal(spent["delta"])) == (
        Decimal(epsilon),
        Decimal(delta),
    )

    # The history holds the release with its result; the chart has drawn the one spend.
    page.wait_for_selector("#history li[data-query-id] table")
    history = page.locator("#history li[data-query-id]")
    assert history.count() == 1
    assert sql in (history.first.text_content() or "")
    expect(history.first.locator("table.accuracy")).to_contain_text("±")  # the record's own
    assert page.get_attribute("#burndown path.spent", "data-spends") == "1"
    assert page.locator("#burndown line.grant").count() == 1
    shoot(page, "console-history.png")

    # The token never left the tab: no URL carried it, no cookie holds it.
    assert not any(researcher.token in url for url in page.requests)  # type: ignore[attr-defined]
    assert page.context.cookies() == []
    assert page.dialogs == []  # type: ignore[attr-defined]
    if os.environ.get("NEBLINA_CONSOLE_SCREENSHOTS") == "1":
        client_plots(stack.api_url, researcher.token)


def client_plots(api_url: str, token: str) -> None:
    """docs/img/client-plots.png: the client's three plots on this researcher's session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neblina_client import Client

    with Client(url=api_url, token=token, dataset="PENGUIN") as client:
        release = client.sql.query(
            "SELECT sex, COUNT(*) AS n FROM df GROUP BY sex", epsilon=0.5, delta=0
        )
        figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
        client.budget().plot(ax=left)
        client.history().plot(budget=client.budget(), ax=middle)
        release.plot(ax=right)
        figure.tight_layout()
        figure.savefig(SHOTS / "client-plots.png", dpi=80)
        plt.close(figure)


def test_a_category_named_like_markup_shows_as_text_and_runs_nothing(
    stack: Any, store: Any, make_researcher: Any, page: Page
) -> None:
    from neblina_admin import operations as admin

    meta = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    meta["columns"]["species"]["categories"] = ["Adelie", "Chinstrap", XSS]
    meta["description"] = f"penguins {XSS}"
    name = f"XSS_{uuid.uuid4().hex[:6].upper()}"
    admin.add_dataset(store, name, str(ROOT / "localstack/data/penguins.csv"), meta)
    researcher = make_researcher({name: ("5", "0.001")})
    sign_in(page, stack.api_url, researcher.token, name)

    assert XSS in (page.text_content("#metadata-columns") or "")
    assert XSS in (page.text_content("#dataset-description") or "")
    page.click("#dummy-preview")
    page.wait_for_selector("#dummy-table table tr td")
    page.fill("#sql", "SELECT species, COUNT(*) AS n FROM df GROUP BY species")
    page.click("#run-dummy")
    page.wait_for_selector("#result table tr td")
    assert XSS in (page.text_content("#result") or "")
    # No element was made from the text, and no script ran.
    assert page.locator("img").count() == 0
    page.wait_for_timeout(200)
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_a_revoked_token_sends_the_researcher_back_to_sign_in(
    stack: Any, store: Any, make_researcher: Any, page: Page
) -> None:
    from neblina_admin import operations as admin

    researcher = make_researcher({"PENGUIN": ("10", "0.001")})
    sign_in(page, stack.api_url, researcher.token, "PENGUIN")
    token_id = next(t.token_id for t in admin.live_tokens(store, researcher.user_id))
    admin.revoke_token(store, token_id)

    page.fill("#sql", "SELECT COUNT(*) AS n FROM df")  # the next price request is refused
    page.wait_for_selector("#signin:not([hidden])")
    assert page.is_hidden("#app")
    assert "Signed out" in (page.text_content("#signin-message") or "")
    assert page.evaluate("sessionStorage.getItem('neblina.token')") is None
