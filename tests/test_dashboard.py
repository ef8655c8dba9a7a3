"""The dashboard, served by a real uvicorn on the test services, driven by headless Chromium.

One app per module, simulator on at a modest rate, so the pages have live data; its model
registry holds two versions so promotion can be shown. The HTTP-level tests (login, CSRF, error
pages) talk to the same server with httpx; the browser tests use Playwright with Debian's
Chromium (FRAUDAPP_TEST_CHROMIUM), never a downloaded browser, and write the README's
screenshots to docs/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from fraudapp.bench.dashboard import CHROMIUM_ARGS
from fraudapp.dashboard.live import pick_feed_rows
from fraudapp.settings import Settings
from tests.conftest import TABLES, make_settings, wait_until

DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = os.environ.get("FRAUDAPP_TEST_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
ANALYST_KEY, ADMIN_KEY, SCORE_KEY = "analyst-key", "admin-key", "score-key"


# --- the served app ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registry with a trained champion (version 1) and a second version to promote."""
    from fraudapp.ml import tracking
    from fraudapp.model import train_first_model

    directory = tmp_path_factory.mktemp("dashboard-mlflow")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    train_first_model(tracking_uri=uri, days=21, customers=3500, seed=7, delay_days=7)
    client = tracking.client(uri)
    first = client.get_model_version(tracking.MODEL_NAME, "1")
    # The same booster registered again: a version that differs from the serving one.
    client.create_model_version(
        tracking.MODEL_NAME,
        source=str(first.source),
        run_id=first.run_id,
        tags=dict(first.tags),
        description="version 1 registered again, to be promoted by the dashboard test",
    )
    return uri


@dataclass
class LiveApp:
    url: str
    settings: Settings
    database_url: str
    errors: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _empty_services(database_url: str, redis_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def live_app(
    service_urls: tuple[str, str],
    dashboard_tracking_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveApp]:
    """The app under uvicorn on a free port (a thread of this process), simulator running."""
    from fraudapp.main import create_app

    database_url, redis_url = service_urls
    asyncio.run(_empty_services(database_url, redis_url))
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path_factory.mktemp("dashboard-data"),
        mlflow_tracking_uri=dashboard_tracking_uri,
        api_keys={SCORE_KEY: ["score"], ANALYST_KEY: ["analyst"], ADMIN_KEY: ["admin"]},
        simulator_enabled=True,
        simulator_rate_tps=200,
        simulator_customers=2000,
        # This small model rarely reaches the production thresholds in a minute of traffic.
        review_score=5,
        decline_score=40,
    )
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    asyncio.run(_wait_ready(url, thread))
    try:
        yield LiveApp(url=url, settings=settings, database_url=database_url)
    finally:
        server.should_exit = True
        thread.join(90)
        assert not thread.is_alive(), "the server did not stop"


async def _wait_ready(url: str, thread: threading.Thread) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def ready() -> bool:
            if not thread.is_alive():
                raise AssertionError("the server thread died while starting")
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(ready, within=180, interval=0.25)


@pytest.fixture
async def live_db(live_app: LiveApp) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(live_app.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def http(live_app: LiveApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_app.url, timeout=30) as client:
        yield client


async def _login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(
        "/login",
        data={"api_key": key, "next": "/review"},
        headers={"Origin": str(client.base_url)},
    )


async def _decided(db: asyncpg.Connection, decision: str, within: float = 120) -> asyncpg.Record:
    """A stored decision of this kind (and unlabelled), waiting for the simulator to make one."""

    async def found() -> asyncpg.Record | None:
        return await db.fetchrow(
            """
            SELECT d.transaction_id, t.customer_id FROM decision d JOIN transaction t
            USING (transaction_id)
            WHERE d.decision = $1
              AND NOT EXISTS (SELECT 1 FROM label l WHERE l.transaction_id = d.transaction_id)
            ORDER BY d.decided_at DESC LIMIT 1
            """,
            decision,
        )

    record: asyncpg.Record = await wait_until(found, within=within, interval=0.5)
    return record


# --- over HTTP --------------------------------------------------------------------------------


def test_feed_sends_risky_rows_first_newest_first() -> None:
    outcomes = ["approve"] * 10
    outcomes[2], outcomes[4] = "review", "decline"
    rows: list[dict[str, Any]] = [{"i": i, "decision": d} for i, d in enumerate(outcomes)]
    picked = [row["i"] for row in pick_feed_rows(rows, 4)]
    assert picked == [9, 8, 4, 2]  # both risky rows kept, then the newest approvals
    assert [row["i"] for row in pick_feed_rows(rows[:2], 4)] == [1, 0]
    assert [row["i"] for row in pick_feed_rows(rows[2:5], 1)] == [4]


def test_training_progress_renders_each_state() -> None:
    from fraudapp.auth import Principal
    from fraudapp.dashboard.views import templates
    from fraudapp.operations import TrainingJob

    template = templates.get_template("_training.html")
    admin = Principal("admin:0000", frozenset({"admin"}))
    job = TrainingJob(job_id=3, requested_by="admin:0000", params={}, state="training")
    job.stage, job.progress = "fit", 0.4
    running = template.render(training=job, viewer=admin)
    assert 'hx-trigger="every 1s"' in running and 'value="0.4"' in running
    assert "disabled" in running  # one job at a time
    job.state, job.version, job.metrics = "done", "7", {"auc_roc": 0.91}
    done = template.render(training=job, viewer=admin)
    assert "every 1s" not in done and "version 7" in done and "0.910" in done
    job.state, job.error = "failed", "no stored transactions to train on"
    assert "no stored transactions" in template.render(training=job, viewer=None)
    assert "Log in" in template.render(training=None, viewer=None)


async def test_pages_answer_html(http: httpx.AsyncClient, live_db: asyncpg.Connection) -> None:
    tx = await _decided(live_db, "review")
    for path in (
        "/",
        "/review",
        "/models",
        "/login",
        f"/transactions/{tx['transaction_id']}",
        f"/customers/{tx['customer_id']}",
        "/partials/kpis",
        "/partials/high-risk",
        "/partials/charts",
    ):
        response = await http.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-type"].startswith("text/html"), path
    transaction = await http.get(f"/transactions/{tx['transaction_id']}")
    assert 'data-figure-for="chart-waterfall"' in transaction.text


async def test_search_goes_to_the_transaction_or_the_customer(
    http: httpx.AsyncClient, live_db: asyncpg.Connection
) -> None:
    tx = await _decided(live_db, "review")
    found = await http.get("/search", params={"q": tx["transaction_id"]})
    assert found.status_code == 303
    assert found.headers["location"] == f"/transactions/{tx['transaction_id']}"
    customer = await http.get("/search", params={"q": f" {tx['customer_id']} "})
    assert customer.headers["location"] == f"/customers/{tx['customer_id']}"
    missing = await http.get("/search", params={"q": "nobody"})
    assert missing.status_code == 404 and "nobody" in missing.text


async def test_errors_are_pages_on_the_dashboard_and_json_on_the_api(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/transactions/no-such-id")
    assert page.status_code == 404
    assert "text/html" in page.headers["content-type"]
    assert "no-such-id" in page.text
    partial = await http.get("/transactions/no-such-id", headers={"HX-Request": "true"})
    assert partial.status_code == 404
    assert partial.headers["HX-Retarget"] == "#messages"
    assert 'role="alert"' in partial.text and "<html" not in partial.text
    unknown = await http.get("/no/such/page")
    assert unknown.status_code == 404 and "text/html" in unknown.headers["content-type"]
    api = await http.get("/api/v1/transactions/no-such-id")
    assert api.status_code == 404
    assert api.json()["error"] == "not_found"


async def test_login_keeps_a_signed_session_and_actions_need_it(
    http: httpx.AsyncClient, live_db: asyncpg.Connection
) -> None:
    tx = await _decided(live_db, "review")
    label_path = f"/transactions/{tx['transaction_id']}/label"
    origin = {"Origin": str(http.base_url), "HX-Request": "true"}

    anonymous = await http.post(label_path, data={"verdict": "fraud"}, headers=origin)
    assert anonymous.status_code == 204
    assert anonymous.headers["HX-Redirect"].startswith("/login")

    refused = await _login(http, SCORE_KEY)
    assert refused.status_code == 401
    assert "no analyst or admin scope" in refused.text
    assert "fraudapp_session" not in http.cookies

    wrong = await _login(http, "not-a-key")
    assert wrong.status_code == 401 and "not valid" in wrong.text

    logged_in = await _login(http, ANALYST_KEY)
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/review"
    cookie = http.cookies["fraudapp_session"]
    assert ANALYST_KEY not in cookie  # the key's name and scopes, never the key

    cross_site = await http.post(
        label_path, data={"verdict": "fraud"}, headers={"Origin": "https://evil.example"}
    )
    assert cross_site.status_code == 403
    assert await live_db.fetchval("SELECT count(*) FROM label WHERE source = 'analyst'") == 0

    admin_only = await http.post("/simulator", data={"action": "pause"}, headers=origin)
    assert admin_only.status_code == 403

    labelled = await http.post(label_path, data={"verdict": "legitimate"}, headers=origin)
    assert labelled.status_code == 200, labelled.text
    assert "legitimate" in labelled.text
    row = await live_db.fetchrow(
        "SELECT is_fraud, source, labelled_by FROM label WHERE transaction_id = $1",
        tx["transaction_id"],
    )
    assert row is not None and row["is_fraud"] is False and row["source"] == "analyst"
    assert row["labelled_by"].startswith("analyst:")

    await http.post("/logout", headers={"Origin": str(http.base_url)})
    after = await http.post(label_path, data={"verdict": "fraud"}, headers=origin)
    assert after.status_code == 204 and "HX-Redirect" in after.headers


async def test_reading_requires_a_login_when_configured(live_app: LiveApp) -> None:
    from types import SimpleNamespace

    from starlette.requests import Request

    from fraudapp.dashboard.session import reader
    from fraudapp.dashboard.views import LoginRequired

    def request(read_requires_key: bool) -> Request:
        settings = live_app.settings.model_copy(update={"read_requires_key": read_requires_key})
        runtime = SimpleNamespace(settings=settings)
        return Request({"type": "http", "headers": [], "state": {"runtime": runtime}})

    assert reader(request(False)) is None
    with pytest.raises(LoginRequired):
        reader(request(True))


# --- in the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return CHROMIUM
    reason = (
        f"Chromium not found at {CHROMIUM}: apt-get install chromium, or name another "
        "executable in FRAUDAPP_TEST_CHROMIUM"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """A page whose console errors, page errors and failed requests are recorded."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def _failed(self, request: Any) -> None:
        # Leaving a page aborts its open requests (the feed's event stream, a poll in flight).
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    async def goto(self, path: str) -> None:
        response = await self.page.goto(self.base_url + path)
        assert response is not None and response.ok, (path, response and response.status)

    async def login(self, key: str) -> None:
        await self.goto("/login")
        await self.page.fill("#api-key", key)
        async with self.page.expect_navigation():
            await self.page.click("form.stack button[type=submit]")

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
async def watched(browser: Any, live_app: LiveApp) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield Watched(page, live_app.url)
    finally:
        await context.close()


async def _wait_for_chart(page: Any, chart_id: str) -> None:
    await page.wait_for_selector(f"#{chart_id} .plot-container svg", state="attached")


@pytest.mark.browser
async def test_every_page_loads_cleanly(watched: Watched, live_db: asyncpg.Connection) -> None:
    tx = await _decided(live_db, "review")
    charts = {
        "/": ["chart-volume", "chart-mix", "chart-scores", "chart-reasons", "chart-amounts"],
        "/review": [],
        "/models": ["chart-roc", "chart-pr", "chart-importance"],
        f"/transactions/{tx['transaction_id']}": ["chart-waterfall"],
        f"/customers/{tx['customer_id']}": ["chart-history"],
        "/login": [],
    }
    for path, chart_ids in charts.items():
        await watched.goto(path)
        for chart_id in chart_ids:
            await _wait_for_chart(watched.page, chart_id)
        if path == "/":  # never idle (live feed, polling): wait for its live parts instead
            await watched.page.wait_for_selector("#kpis .kpi")
            await watched.page.wait_for_selector("#high-risk table, #high-risk .empty")
        else:
            await watched.page.wait_for_load_state("networkidle")
        watched.check()


@pytest.mark.browser
async def test_overview_feed_grows_live_and_charts_render(watched: Watched) -> None:
    page = watched.page
    await watched.goto("/")
    for chart_id in ("chart-volume", "chart-mix", "chart-scores", "chart-reasons", "chart-amounts"):
        await _wait_for_chart(page, chart_id)
    await page.wait_for_function("document.querySelectorAll('#feed tr').length >= 3")
    before = await page.eval_on_selector("#feed tr", "row => row.outerHTML")
    # New rows arrive on top without a reload: the newest row changes, the page stays.
    await page.wait_for_function(
        "html => document.querySelector('#feed tr').outerHTML !== html", arg=before
    )
    await page.wait_for_function("document.querySelectorAll('#feed tr').length >= 12")
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
    rows = await page.eval_on_selector_all("#feed tr", "rows => rows.length")
    assert rows <= 30  # the DOM list is capped
    throughput = await page.text_content("#kpis .kpi-value")
    assert throughput is not None and throughput.strip() not in ("", "–")
    await page.wait_for_selector("#high-risk table")
    # For the README's picture: some reviews or declines in view, not only approvals.
    await page.wait_for_function(
        "Array.from(document.querySelectorAll('#feed tr')).slice(0, 12)"
        ".filter(row => !row.classList.contains('row-approve')).length >= 2",
        timeout=90_000,
    )
    await page.screenshot(path=str(DOCS / "overview.png"))
    watched.check()


@pytest.mark.browser
async def test_review_queue_labels_with_one_key(
    watched: Watched, live_db: asyncpg.Connection
) -> None:
    page = watched.page
    await _decided(live_db, "review")
    await watched.login(ANALYST_KEY)
    await watched.goto("/review")
    await page.wait_for_selector("#review-queue tbody tr.selected")
    rows = await page.eval_on_selector_all("#review-queue tbody tr", "rows => rows.length")
    await page.screenshot(path=str(DOCS / "review.png"))

    await page.keyboard.press("j")  # move to the second row, and back
    await page.keyboard.press("k")
    first = await page.get_attribute("#review-queue tbody tr.selected", "data-transaction-id")
    assert first is not None
    await page.keyboard.press("f")
    await page.wait_for_selector(f'tr[data-transaction-id="{first}"]', state="detached")
    await page.wait_for_selector(".toast")
    label = await live_db.fetchrow(
        "SELECT is_fraud, source, labelled_by FROM label WHERE transaction_id = $1", first
    )
    assert label is not None and label["is_fraud"] is True and label["source"] == "analyst"
    assert label["labelled_by"].startswith("analyst:")

    if rows > 1:  # the next row is selected: "l" labels it legitimate
        second = await page.get_attribute("#review-queue tbody tr.selected", "data-transaction-id")
        assert second is not None and second != first
        await page.keyboard.press("l")
        await page.wait_for_selector(f'tr[data-transaction-id="{second}"]', state="detached")
        verdict = await live_db.fetchval(
            "SELECT is_fraud FROM label WHERE transaction_id = $1", second
        )
        assert verdict is False
    watched.check()


@pytest.mark.browser
async def test_transaction_page_explains_with_a_waterfall(
    watched: Watched, live_db: asyncpg.Connection
) -> None:
    page = watched.page
    tx = await _decided(live_db, "decline")
    await watched.login(ANALYST_KEY)
    await watched.goto(f"/transactions/{tx['transaction_id']}")
    await _wait_for_chart(page, "chart-waterfall")
    bars = page.locator("#chart-waterfall .waterfalllayer .point")
    assert await bars.count() >= 5  # base, features, prediction
    features = await page.eval_on_selector_all("table.features tbody tr", "rows => rows.length")
    assert features > 10
    assert await page.locator(".reasons-list li").count() >= 1
    await page.screenshot(path=str(DOCS / "transaction.png"))
    await page.keyboard.press("f")  # the label panel answers the same keys as the queue
    await page.wait_for_selector("#label-panel .pill-decline")
    verdict = await live_db.fetchval(
        "SELECT is_fraud FROM label WHERE transaction_id = $1", tx["transaction_id"]
    )
    assert verdict is True
    watched.check()


@pytest.mark.browser
async def test_customer_block_shows_on_the_page(
    watched: Watched, live_db: asyncpg.Connection
) -> None:
    page = watched.page
    tx = await _decided(live_db, "review")
    await watched.login(ANALYST_KEY)
    await watched.goto(f"/customers/{tx['customer_id']}")
    await _wait_for_chart(page, "chart-history")
    await page.fill("#reason-customer", "browser test")
    await page.click(".list-form button[value=block]")
    await page.wait_for_selector(".list-entry .pill-decline")
    entry = await live_db.fetchrow(
        "SELECT list, reason FROM list_entry WHERE entity_type = 'customer' AND entity_id = $1",
        tx["customer_id"],
    )
    assert entry is not None and entry["list"] == "block" and entry["reason"] == "browser test"
    await page.click(".list-entry button.btn-quiet")
    await page.wait_for_selector(".list-entry .pill-decline", state="detached")
    assert (
        await live_db.fetchval(
            "SELECT count(*) FROM list_entry WHERE entity_id = $1", tx["customer_id"]
        )
        == 0
    )
    watched.check()


@pytest.mark.browser
async def test_admin_pauses_resumes_and_sets_the_simulator_rate(
    watched: Watched, live_app: LiveApp
) -> None:
    page = watched.page
    await watched.login(ADMIN_KEY)
    await watched.goto("/")
    await page.click("#simulator button[value=pause]")
    await page.wait_for_selector("#simulator:has-text('Simulator paused')")
    await page.click("#simulator button[value=resume]")
    await page.wait_for_selector("#simulator:has-text('Simulator running')")
    await page.fill("#sim-rate", "150")
    await page.click("#simulator button[value=rate]")
    await page.wait_for_selector("#simulator:has-text('running at 150 tx/s')")
    async with httpx.AsyncClient(base_url=live_app.url) as client:
        ready = (await client.get("/readyz")).json()
    assert ready["components"]["pipeline"]["simulator"]["rate_tps"] == 150
    watched.check()


@pytest.mark.browser
async def test_promoting_a_version_changes_the_serving_version(watched: Watched) -> None:
    page = watched.page
    await watched.login(ADMIN_KEY)
    await watched.goto("/models")
    assert (await page.text_content("#models-serving")) == "version 1"
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    async with page.expect_navigation():  # the page reloads once the version serves
        await page.click('tr[data-version="2"] button')
    await page.wait_for_selector("#models-serving")
    assert (await page.text_content("#models-serving")) == "version 2"
    await watched.goto("/")
    await page.wait_for_function(
        "document.querySelector('#serving-version') && "
        "document.querySelector('#serving-version').textContent.trim() === 'v2'"
    )
    watched.check()
