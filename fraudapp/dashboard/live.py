"""The overview's live parts: KPI tiles, the decision feed, high-risk customers, charts, simulator.

What stays cheap at 10,000 tx/s: the KPI tiles read the pipeline's in-memory metrics, and count
today's decisions incrementally (settled 10-second slices are counted once, only the last
seconds every time); chart queries read a bounded window; every result is cached for a moment
and shared by all viewers. The feed is a server-sent-event stream per viewer, throttled to a
few rows per tick, newest first, however fast the pipeline publishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from fraudapp import cache, operations
from fraudapp.dashboard import figures
from fraudapp.dashboard.session import AdminDep, reader
from fraudapp.dashboard.views import render, templates
from fraudapp.deps import RuntimeDep
from fraudapp.errors import InvalidInput
from fraudapp.lifespan import Runtime
from fraudapp.store import charts, reads

log = logging.getLogger(__name__)
T = TypeVar("T")

KPI_TTL_SECONDS = 1.5
CHART_TTL_SECONDS = 15.0
CHART_WINDOW = timedelta(minutes=30)
CHART_BUCKET_SECONDS = 30
# The distribution charts read at most about this many recent decisions: at 50 tx/s that is the
# whole window, at 10,000 tx/s the last 5 seconds — plenty for a distribution, and bounded.
DISTRIBUTION_DECISIONS = 50_000
SCORE_BINS = 20
HIGH_RISK_ROWS = 12
FEED_TICK_SECONDS = 0.5
FEED_ROWS_PER_TICK = 5  # ≤ 10 rows a second per viewer, whatever the pipeline's rate
# Decisions are counted once for good when older than this; younger ones on every refresh.
# A batch committed later than this after its decision (PostgreSQL away that long) is missed
# by the live tiles and charts, never by the database.
SETTLE = timedelta(seconds=15)
SLICE_SECONDS = 5


class Cached(Generic[T]):
    """A value recomputed at most every `ttl_seconds`, shared by concurrent requests."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._values: dict[str, tuple[float, T]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        held = self._values.get(key)
        if held is not None and held[0] > time.monotonic():
            return held[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            held = self._values.get(key)
            if held is not None and held[0] > time.monotonic():
                return held[1]
            value = await compute()
            self._values[key] = (time.monotonic() + self.ttl_seconds, value)
            return value


def _floor(moment: datetime, seconds: int) -> datetime:
    """`moment` rounded down to a multiple of `seconds` since the epoch."""
    epoch = moment.timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


@dataclass
class TodayCounter:
    """Today's decisions by outcome (UTC day, `decided_at`), counted incrementally: slices
    older than `SETTLE` are added once, only the younger tail is counted on each refresh."""

    day: datetime | None = None
    settled_until: datetime | None = None
    settled: Counter[str] = field(default_factory=Counter)

    async def count(self, runtime: Runtime, now: datetime) -> Counter[str]:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.day != midnight or self.settled_until is None:
            self.day, self.settled_until, self.settled = midnight, midnight, Counter()
        boundary = _floor(now - SETTLE, SLICE_SECONDS)
        if boundary > self.settled_until:
            self.settled.update(
                await charts.count_decisions(runtime.pool, since=self.settled_until, until=boundary)
            )
            self.settled_until = boundary
        tail = await charts.count_decisions(
            runtime.pool, since=self.settled_until, until=now + timedelta(minutes=1)
        )
        return self.settled + Counter(tail)


@dataclass
class VolumeSeries:
    """Decisions and alerts per `CHART_BUCKET_SECONDS` over `CHART_WINDOW`, kept up to date
    the same way: settled buckets are read once, so a refresh reads only the last seconds."""

    settled_until: datetime | None = None
    settled: dict[datetime, dict[str, Any]] = field(default_factory=dict)

    async def series(self, runtime: Runtime, now: datetime) -> list[dict[str, Any]]:
        start = _floor(now - CHART_WINDOW, CHART_BUCKET_SECONDS)
        if self.settled_until is None or self.settled_until < start:
            self.settled_until, self.settled = start, {}
        rows = await reads.fetch_volume_series(
            runtime.pool, since=self.settled_until, bucket_seconds=CHART_BUCKET_SECONDS
        )
        boundary = _floor(now - SETTLE, CHART_BUCKET_SECONDS)
        step = timedelta(seconds=CHART_BUCKET_SECONDS)
        live = []
        for row in rows:
            if row["bucket"] + step <= boundary:
                self.settled[row["bucket"]] = row
            else:
                live.append(row)
        self.settled_until = max(self.settled_until, boundary)
        for bucket in [b for b in self.settled if b < start]:
            del self.settled[bucket]
        return [self.settled[b] for b in sorted(self.settled)] + live


class LiveState:
    """Per-app caches of the live views (kept on `app.state`)."""

    def __init__(self) -> None:
        self.kpis: Cached[dict[str, Any]] = Cached(KPI_TTL_SECONDS)
        self.charts: Cached[dict[str, Any]] = Cached(CHART_TTL_SECONDS)
        self.high_risk: Cached[tuple[list[dict[str, Any]], str]] = Cached(KPI_TTL_SECONDS)
        self.today = TodayCounter()
        self.volume = VolumeSeries()


def live_state(request: Request) -> LiveState:
    state = getattr(request.app.state, "dashboard_live", None)
    if state is None:
        state = request.app.state.dashboard_live = LiveState()
    return state


LiveDep = Annotated[LiveState, Depends(live_state)]


# --- KPIs ----------------------------------------------------------------------------------


async def collect_kpis(runtime: Runtime, state: LiveState) -> dict[str, Any]:
    """The tiles: throughput, today's volume and rates, p99 latency, queue, serving model."""
    engine = runtime.engine
    model = engine.model_report()
    pipeline = engine.pipeline
    kpis: dict[str, Any] = {
        "model": model,
        "pipeline_state": engine.pipeline_report()["state"],
        "model_version": model.get("version"),
        "throughput_tps": None,
        "p99_ms": None,
        "queue_depth": None,
        "queue_max": None,
        "today": None,
        "alert_rate": None,
        "decline_rate": None,
        "simulator": engine.simulator_status(),
    }
    if pipeline is not None:
        kpis.update(
            throughput_tps=engine.metrics.throughput_tps(),
            p99_ms=engine.metrics.latency_ms()["p99"],
            queue_depth=pipeline.queue.qsize(),
            queue_max=pipeline.queue.maxsize,
            model_version=pipeline.scorer.model.version,
        )
    counts = await state.today.count(runtime, datetime.now(UTC))
    total = sum(counts.values())
    kpis["today"] = total
    if total:
        kpis["alert_rate"] = (counts["review"] + counts["decline"]) / total
        kpis["decline_rate"] = counts["decline"] / total
    return kpis


# --- high-risk customers -------------------------------------------------------------------


async def collect_high_risk(runtime: Runtime) -> tuple[list[dict[str, Any]], str]:
    """The riskiest customers from Redis, or from PostgreSQL while Redis is away."""
    settings = runtime.settings
    try:
        rows = await cache.fetch_high_risk(
            runtime.redis, prefix=settings.cache_key_prefix, limit=HIGH_RISK_ROWS
        )
        return rows, "redis"
    except (RedisError, OSError) as exc:
        log.warning("dashboard.high_risk_fallback error=%s", exc)
    since = datetime.now(UTC) - timedelta(seconds=settings.cache_ttl_seconds)
    return await reads.fetch_high_risk(runtime.pool, since=since, limit=HIGH_RISK_ROWS), "database"


# --- charts --------------------------------------------------------------------------------


async def collect_charts(runtime: Runtime, state: LiveState) -> dict[str, Any]:
    """The overview's figures as embeddable JSON, and the span the distributions cover.

    Volume over the whole `CHART_WINDOW`; the distributions over the latest
    ~`DISTRIBUTION_DECISIONS` decisions within it. The queries run one after another, so the
    charts never hold more than one of the pool's connections the writers need.
    """
    now = datetime.now(UTC)
    pool = runtime.pool
    settings = runtime.settings
    tps = runtime.engine.metrics.throughput_tps()
    span = min(CHART_WINDOW, timedelta(seconds=DISTRIBUTION_DECISIONS / max(tps, 1.0)))
    since = now - span
    volume = await state.volume.series(runtime, now)
    histogram = await charts.fetch_score_histogram(pool, since=since, bins=SCORE_BINS)
    mix = await charts.fetch_decision_mix(pool, since=since)
    reasons = await charts.fetch_reason_counts(pool, since=since)
    amounts = await charts.fetch_amount_quantiles(pool, since=since)
    built = {
        "chart-volume": figures.volume_figure(volume, bucket_seconds=CHART_BUCKET_SECONDS),
        "chart-scores": figures.score_histogram_figure(
            histogram,
            bins=SCORE_BINS,
            review_score=settings.review_score,
            decline_score=settings.decline_score,
        ),
        "chart-mix": figures.decision_mix_figure(mix),
        "chart-reasons": figures.reasons_figure(reasons),
        "chart-amounts": figures.amount_figure(amounts),
    }
    return {
        "figures": {name: figures.figure_json(fig) for name, fig in built.items()},
        "span": describe_span(span),
    }


def describe_span(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds >= 60:
        return f"last {seconds / 60:.0f} minutes"
    return f"last {seconds:.0f} seconds"


# --- routes --------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False, dependencies=[Depends(reader)])


@router.get("/partials/kpis", response_class=HTMLResponse)
async def kpis_partial(request: Request, runtime: RuntimeDep, state: LiveDep) -> HTMLResponse:
    kpis = await state.kpis.get("kpis", lambda: collect_kpis(runtime, state))
    return render(request, "_kpis.html", {"kpis": kpis})


@router.get("/partials/high-risk", response_class=HTMLResponse)
async def high_risk_partial(request: Request, runtime: RuntimeDep, state: LiveDep) -> HTMLResponse:
    rows, source = await state.high_risk.get("rows", lambda: collect_high_risk(runtime))
    settings = runtime.settings
    context = {
        "customers": rows,
        "source": source,
        "review_score": settings.review_score,
        "decline_score": settings.decline_score,
    }
    return render(request, "_high_risk.html", context)


@router.get("/partials/charts", response_class=HTMLResponse)
async def charts_partial(request: Request, runtime: RuntimeDep, state: LiveDep) -> HTMLResponse:
    built = await state.charts.get("overview", lambda: collect_charts(runtime, state))
    return render(request, "_chart_data.html", built)


@router.get("/partials/simulator", response_class=HTMLResponse)
async def simulator_partial(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    return render(request, "_simulator.html", {"simulator": runtime.engine.simulator_status()})


@router.post("/simulator", response_class=HTMLResponse)
async def control_simulator(
    request: Request,
    runtime: RuntimeDep,
    admin: AdminDep,
    action: Annotated[str, Form()],
    rate_tps: Annotated[str | None, Form()] = None,
) -> HTMLResponse:
    """Pause, resume, or set the rate of the live simulator (admin, as in the API)."""
    if action == "pause":
        status = await operations.control_simulator(runtime, paused=True)
    elif action == "resume":
        status = await operations.control_simulator(runtime, paused=False)
    elif action == "rate":
        try:
            rate = float(rate_tps or "")
        except ValueError:
            raise InvalidInput(
                f"the rate must be a number of transactions per second, not {rate_tps!r}"
            ) from None
        status = await operations.control_simulator(runtime, rate_tps=rate)
    else:
        raise InvalidInput(f"unknown simulator action {action!r} (pause, resume or rate)")
    log.info("dashboard.simulator action=%s by=%s", action, admin.name)
    return render(request, "_simulator.html", {"simulator": status})


@router.get("/feed")
async def feed(request: Request, runtime: RuntimeDep) -> EventSourceResponse:
    """Server-sent events: `decisions` carries table rows (HTML), newest first."""
    return EventSourceResponse(feed_events(request, runtime), ping=15, send_timeout=10)


def pick_feed_rows(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The rows one tick shows: the newest reviews and declines first, then the newest
    approvals, at most `limit`, newest first (rows arrive oldest first)."""
    risky = [row for row in rows if row["decision"] != "approve"][-limit:]
    room = limit - len(risky)
    approved = [row for row in rows if row["decision"] == "approve"][-room:] if room else []
    chosen = {id(row) for row in risky + approved}
    return [row for row in reversed(rows) if id(row) in chosen]


async def feed_events(request: Request, runtime: Runtime) -> AsyncIterator[dict[str, str]]:
    live_feed = runtime.engine.feed
    queue = live_feed.subscribe()
    template = templates.get_template("_feed_rows.html")
    settings = runtime.settings
    try:
        while True:
            first = await queue.get()
            await asyncio.sleep(FEED_TICK_SECONDS)
            rows = [first]
            while not queue.empty():
                rows.append(queue.get_nowait())
            shown = pick_feed_rows(rows, FEED_ROWS_PER_TICK)
            html = template.render(
                rows=shown,
                review_score=settings.review_score,
                decline_score=settings.decline_score,
            )
            yield {"event": "decisions", "data": html}
    finally:
        live_feed.unsubscribe(queue)
