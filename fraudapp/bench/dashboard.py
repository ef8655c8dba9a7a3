"""`fraudapp bench dashboard`: the overview page in headless Chromium while the pipeline runs hot.

Starts the app under uvicorn as `bench api` does (simulator at 10,000 tx/s by default), opens `/`
in Chromium through Playwright and, after a warm-up, measures in the page for a window: feed
messages and rows per second, feed rows kept, long tasks, timer lag, frames, KPI refreshes, JS
heap, key press → next frame; then click → paint of a few navigations. Beside it the server's
committed tx/s (from /metrics) and the CPU of each process. Prints them; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from fraudapp.bench.api import ServedApp, add_served_app_options, serve_app

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-precise-memory-info",  # performance.memory unrounded
]
KPI_EVERY_SECONDS = 2.0  # hx-trigger="every 2s" in overview.html
LAG_PROBE_MS = 100
KEY_EVERY_SECONDS = 1.0
NAVIGATION_ROUNDS = 3
MIB = 1024 * 1024
# [first byte, first contentful paint] of the current page, ms from its navigation's start;
# the paint entry may be reported after `load`, so wait for it a little.
FIRST_PAINT_JS = """
() => new Promise((resolve) => {
  const nav = performance.getEntriesByType("navigation")[0];
  const answer = (fcp) => resolve([nav ? nav.responseStart : null, fcp ? fcp.startTime : null]);
  const found = () => performance.getEntriesByName("first-contentful-paint")[0];
  if (found()) return answer(found());
  new PerformanceObserver(() => found() && answer(found())).observe({ type: "paint" });
  setTimeout(() => answer(found()), 5000);
})
"""

# Installed before any page script: counts at the EventSource (before htmx sees a message), a
# setTimeout drift probe, frames, long tasks, KPI swaps, and key press → next frame on the
# search box. `reset()` starts the window, `report()` returns the raw figures.
PROBE_JS = """
(() => {
  const now = () => performance.now();
  const fresh = () => ({
    started: now(), sse: 0, sseBytes: 0, sseAt: [], swapMs: [], rowsAdded: 0, rowsRemoved: 0,
    maxRows: 0, maxFeedNodes: 0, longTasks: [], lags: [], frames: [], kpiAt: [], kpiMs: [],
    keys: [], slowEvents: [], chartAt: [], chartMs: [],
  });
  let s = fresh();
  const heap = () => performance.memory ? performance.memory.usedJSHeapSize : null;
  const feedRows = () => {
    const feed = document.getElementById("feed");
    return feed ? feed.rows.length : null;
  };
  // Every child node, text included: rows alone would miss what htmx inserts between them.
  const feedNodes = () => {
    const feed = document.getElementById("feed");
    return feed ? feed.childNodes.length : null;
  };
  window.__fraudappBench = {
    reset() { s = fresh(); return heap(); },
    report() {
      return Object.assign({}, s, {
        elapsed: now() - s.started, heap: heap(), rows: feedRows(), feedNodes: feedNodes(),
        nodes: document.getElementsByTagName("*").length,
      });
    },
  };

  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      this.addEventListener("decisions", (event) => {
        s.sse += 1; s.sseBytes += event.data.length; s.sseAt.push(now());
      });
    }
  };

  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) s.longTasks.push([entry.startTime, entry.duration]);
  }).observe({ type: "longtask", buffered: true });
  try {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        if (entry.interactionId) s.slowEvents.push([entry.interactionId, entry.duration]);
      }
    }).observe({ type: "event", durationThreshold: 16 });
  } catch (error) { /* no Event Timing */ }

  let expected = now() + __LAG_MS__;
  const tick = () => {
    const t = now();
    s.lags.push(Math.max(0, t - expected));
    const rows = feedRows();
    if (rows !== null && rows > s.maxRows) s.maxRows = rows;
    const nodes = feedNodes();
    if (nodes !== null && nodes > s.maxFeedNodes) s.maxFeedNodes = nodes;
    expected = t + __LAG_MS__;
    setTimeout(tick, __LAG_MS__);
  };
  setTimeout(tick, __LAG_MS__);
  let lastFrame = null;
  const frame = (t) => {
    if (lastFrame !== null) s.frames.push(t - lastFrame);
    lastFrame = t;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);

  let sseStarted = 0;
  document.addEventListener("htmx:sseBeforeMessage", () => { sseStarted = now(); });
  document.addEventListener("htmx:sseMessage", () => { s.swapMs.push(now() - sseStarted); });
  let kpiRequested = null;
  document.addEventListener("htmx:beforeRequest", (event) => {
    if (event.detail.elt && event.detail.elt.id === "kpis") kpiRequested = now();
  });
  document.addEventListener("htmx:afterSwap", (event) => {
    // Fired on each element swapped in (out-of-band ones too): count the target's own.
    if (event.target !== event.detail.target) return;
    const id = event.target.id;
    if (id === "chart-data") {
      // app.js draws the figures in its own afterSwap listener, after this one, same task.
      const swapped = now();
      s.chartAt.push(swapped);
      queueMicrotask(() => s.chartMs.push(now() - swapped));
    }
    if (id !== "kpis") return;
    const t = now();
    s.kpiAt.push(t);
    if (kpiRequested !== null) s.kpiMs.push(t - kpiRequested);
    kpiRequested = null;
  });
  document.addEventListener("keydown", (event) => {
    if (!event.target || event.target.id !== "search-q") return;
    const pressed = event.timeStamp, handled = now();
    // rAF runs just before the frame is drawn; a message posted there is handled after it.
    requestAnimationFrame(() => {
      const channel = new MessageChannel();
      channel.port1.onmessage = () => s.keys.push([handled - pressed, now() - pressed]);
      channel.port2.postMessage(null);
    });
  }, true);
  document.addEventListener("DOMContentLoaded", () => {
    const feed = document.getElementById("feed");
    if (!feed) return;
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) if (node.nodeName === "TR") s.rowsAdded += 1;
        for (const node of record.removedNodes) if (node.nodeName === "TR") s.rowsRemoved += 1;
      }
    }).observe(feed, { childList: true });
  });
})();
""".replace("__LAG_MS__", str(LAG_PROBE_MS))


def add_cli(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "dashboard", help="the overview page in headless Chromium while the pipeline runs hot"
    )
    parser.add_argument("--simulator-rate", type=float, default=10_000.0, help="live tx/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup-seconds", type=float, default=10.0, help="page open, unmeasured")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("FRAUDAPP_TEST_CHROMIUM", "/usr/bin/chromium"),
        help="Chromium executable (default $FRAUDAPP_TEST_CHROMIUM or /usr/bin/chromium)",
    )
    add_served_app_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.chromium).exists():
        raise FileNotFoundError(f"no Chromium at {args.chromium} (--chromium)")
    with ExitStack() as stack:
        app = serve_app(
            stack,
            name="dashboard",
            data_dir=args.data_dir,
            simulator_rate=args.simulator_rate,
            tracking_uri=args.tracking_uri,
            env={"FRAUDAPP_READ_REQUIRES_KEY": "false"},
        )
        print(f"ready; simulator at {args.simulator_rate:g} tx/s; opening / in {args.chromium}")
        asyncio.run(_bench(app, args))
    return 0


# --- the server side -------------------------------------------------------------------------


@dataclass
class ServerSamples:
    """/metrics once a second: committed transactions, queue depth, latency buckets."""

    at: list[float] = field(default_factory=list)
    committed: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    latency_buckets: list[dict[float, float]] = field(default_factory=list)


async def _scrape(client: httpx.AsyncClient) -> tuple[float, float, dict[float, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics")).text
    committed, queue, buckets = 0.0, 0.0, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fraudapp_transactions_total":
                committed += sample.value
            elif sample.name == "fraudapp_queue_depth":
                queue = sample.value
            elif sample.name == "fraudapp_latency_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return committed, queue, buckets


async def _sample_server(client: httpx.AsyncClient, samples: ServerSamples) -> None:
    while True:
        try:
            committed, queue, buckets = await _scrape(client)
        except httpx.HTTPError:
            pass
        else:
            samples.at.append(time.monotonic())
            samples.committed.append(committed)
            samples.queue.append(queue)
            samples.latency_buckets.append(buckets)
        await asyncio.sleep(1.0)


def _latency_quantile_bound(first: dict[float, float], last: dict[float, float], q: float) -> str:
    """The histogram bucket holding quantile `q` of the window's latencies, as "≤ N ms"."""
    bounds = sorted(last)
    counts = np.array([last[b] - first.get(b, 0.0) for b in bounds])  # cumulative
    if not len(counts) or counts[-1] <= 0:
        return "–"
    index = int(np.searchsorted(counts, q * counts[-1]))
    bound = bounds[min(index, len(bounds) - 1)]
    return "> 10 s" if bound == float("inf") else f"≤ {bound * 1000:g} ms"


# --- CPU ---------------------------------------------------------------------------------------


def _cpu_seconds(processes: Iterable[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.Error:
            continue
    return seconds


def _cpu_groups(server_pid: int) -> dict[str, list[psutil.Process]]:
    """This machine's processes that matter here: the app, Chromium, PostgreSQL, Redis, and
    this bench (Python and the Playwright driver)."""
    server = psutil.Process(server_pid)
    me = psutil.Process()
    groups: dict[str, list[psutil.Process]] = {
        "app": [server, *server.children(recursive=True)],
        "chromium": [],
        "postgres": [],
        "redis": [],
        "bench": [me],
    }
    app = {p.pid for p in groups["app"]}
    mine = {p.pid for p in me.children(recursive=True)}
    for process in psutil.process_iter(["name"]):
        name = (process.info["name"] or "").lower()
        if process.pid in app or process.pid == me.pid:
            continue
        if "chrom" in name:
            if process.pid in mine:  # this bench's browser, not another one on the machine
                groups["chromium"].append(process)
        elif name.startswith("postgres"):
            groups["postgres"].append(process)
        elif name.startswith("redis"):
            groups["redis"].append(process)
        elif process.pid in mine:
            groups["bench"].append(process)
    return groups


@dataclass
class CpuWindow:
    """CPU seconds of each group over the window, as a share of one core."""

    started: float
    machine: float
    groups: dict[str, dict[int, float]]

    @classmethod
    def start(cls, server_pid: int) -> CpuWindow:
        groups = {name: _cpu_seconds(ps) for name, ps in _cpu_groups(server_pid).items()}
        return cls(time.monotonic(), _busy_seconds(), groups)

    def describe(self, server_pid: int) -> str:
        elapsed = time.monotonic() - self.started
        machine = (_busy_seconds() - self.machine) / elapsed
        parts, counted = [], 0.0
        for name, processes in _cpu_groups(server_pid).items():
            before = self.groups.get(name, {})
            used = sum(
                seconds - before.get(pid, 0.0) for pid, seconds in _cpu_seconds(processes).items()
            )
            counted += used / elapsed
            parts.append(f"{name} {used / elapsed:.0%}")
        cores = psutil.cpu_count() or 1
        return (
            f"CPU (100% = one core): {', '.join(parts)}, anything else "
            f"{max(0.0, machine - counted):.0%}; machine {machine:.0%} of {cores * 100}%"
        )


def _busy_seconds() -> float:
    times = psutil.cpu_times()._asdict()  # guest time is already counted in user
    busy = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(times.get(name, 0.0) for name in busy))


# --- the browser ---------------------------------------------------------------------------------


@dataclass
class Problems:
    """Console errors, page errors, failed requests and HTTP errors seen by the page."""

    console: list[str] = field(default_factory=list)
    page: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    http: list[str] = field(default_factory=list)
    navigating: bool = False

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page.append(str(exc)))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console.append(message.text)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.http.append(f"HTTP {response.status} {response.url}")

    def _failed(self, request: Any) -> None:
        # Leaving a page aborts its open requests (the feed's event stream, a poll in flight).
        if not (self.navigating and request.failure == "net::ERR_ABORTED"):
            self.failed.append(f"{request.url} {request.failure}")

    def describe(self) -> str:
        counts = (
            f"console errors {len(self.console)}, page errors {len(self.page)}, failed requests "
            f"{len(self.failed)}, HTTP ≥ 400 {len(self.http)}"
        )
        seen = list(dict.fromkeys(self.console + self.page + self.failed + self.http))[:5]
        return "\n".join([counts, *(f"  {line}" for line in seen)])


async def _metrics(cdp: Any) -> dict[str, float]:
    """Chromium's own counters (Performance domain): heap, nodes, listeners, task time."""
    answer = await cdp.send("Performance.getMetrics")
    return {m["name"]: float(m["value"]) for m in answer["metrics"]}


async def _bench(app: ServedApp, args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    problems = Problems()
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=10) as client,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            await context.add_init_script(PROBE_JS)
            page = await context.new_page()
            problems.watch(page)
            cdp = await context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            await page.goto(app.url + "/")
            await page.wait_for_function(
                "document.querySelectorAll('#feed tr').length > 0", timeout=60_000
            )
            print(f"page open, feed live; warming up {args.warmup_seconds:g} s", flush=True)
            await asyncio.sleep(args.warmup_seconds)
            await _window(page, cdp, client, app, args, problems)
            await _navigations(page, problems)
        finally:
            await browser.close()
    print(f"page: {problems.describe()}")


async def _window(
    page: Any,
    cdp: Any,
    client: httpx.AsyncClient,
    app: ServedApp,
    args: argparse.Namespace,
    problems: Problems,
) -> None:
    await cdp.send("HeapProfiler.collectGarbage")
    await asyncio.sleep(1.0)  # let the collection's long task be reported before the reset
    before = await _metrics(cdp)
    heap_start = await page.evaluate("window.__fraudappBench.reset()")
    cpu = CpuWindow.start(app.process.pid)
    readyz_start = (await client.get("/readyz")).json()["components"]["pipeline"]
    samples = ServerSamples()
    sampler = asyncio.create_task(_sample_server(client, samples))
    print(f"measuring {args.seconds:g} s", flush=True)

    await page.focus("#search-q")
    started = time.monotonic()
    presses = 0
    while time.monotonic() - started < args.seconds:
        await asyncio.sleep(KEY_EVERY_SECONDS)
        await page.keyboard.press("7" if presses % 2 == 0 else "Backspace")
        presses += 1

    report = await page.evaluate("window.__fraudappBench.report()")
    after = await _metrics(cdp)
    cpu_line = cpu.describe(app.process.pid)
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    readyz_end = (await client.get("/readyz")).json()["components"]["pipeline"]
    await cdp.send("HeapProfiler.collectGarbage")
    collected = await _metrics(cdp)

    seconds = report["elapsed"] / 1000.0
    _print_server(samples, readyz_start, readyz_end, args.simulator_rate)
    print(cpu_line)
    _print_page(report, seconds, before, after, collected, heap_start)


def _print_server(
    samples: ServerSamples, start: dict[str, Any], end: dict[str, Any], rate: float
) -> None:
    if len(samples.at) < 2:
        print("server: too few /metrics samples")
        return
    at, committed = np.array(samples.at), np.array(samples.committed)
    span = at[-1] - at[0]
    per_5s = [
        (committed[j] - committed[i]) / (at[j] - at[i])
        for i, j in zip(range(0, len(at) - 5, 5), range(5, len(at), 5), strict=False)
    ]
    sim_start = start.get("simulator", {}).get("emitted_transactions", 0)
    sim_end = end.get("simulator", {}).get("emitted_transactions", 0)
    first, last = samples.latency_buckets[0], samples.latency_buckets[-1]
    spread = f" (per 5 s: {min(per_5s):,.0f} – {max(per_5s):,.0f})" if per_5s else ""
    print(
        f"server: committed {(committed[-1] - committed[0]) / span:,.0f} tx/s over {span:.0f} s"
        f"{spread}, offered {rate:,.0f}; simulator emitted "
        f"{sim_end - sim_start:,} in the window; queue depth mean "
        f"{np.mean(samples.queue):.1f} max {max(samples.queue):.0f} of "
        f"{end.get('queue_max')} chunks; queued → committed p50 "
        f"{_latency_quantile_bound(first, last, 0.5)}, p99 "
        f"{_latency_quantile_bound(first, last, 0.99)}; pipeline {end.get('state')}"
    )


def _percentiles(values: list[float], label: str) -> str:
    head = f"{label} " if label else ""
    if not values:
        return f"{head}–"
    p50, p99 = np.percentile(values, [50, 99])
    return f"{head}p50 {p50:.1f} p99 {p99:.1f} max {max(values):.1f} ms"


def _print_page(
    report: dict[str, Any],
    seconds: float,
    before: dict[str, float],
    after: dict[str, float],
    collected: dict[str, float],
    heap_start: float | None,
) -> None:
    gaps = np.diff(report["sseAt"]).tolist()
    print(
        f"feed: {report['sse'] / seconds:.2f} SSE messages/s "
        f"({report['sseBytes'] / seconds / 1024:.1f} KiB/s), {report['rowsAdded'] / seconds:.1f} "
        f"rows added/s, {report['rowsRemoved'] / seconds:.1f} removed/s; rows in the DOM at the "
        f"end {report['rows']}, most {report['maxRows']}; child nodes of the feed at the end "
        f"{report['feedNodes']}, most {report['maxFeedNodes']}; "
        + _percentiles(gaps, "gap between messages")
        + "; "
        + _percentiles(report["swapMs"], "swap per message")
    )
    long_tasks = [duration for _, duration in report["longTasks"]]
    charted = [
        duration
        for start, duration in report["longTasks"]
        if any(start <= at <= start + duration for at in report["chartAt"])
    ]
    busy = after["TaskDuration"] - before["TaskDuration"]
    print(
        f"main thread: {len(long_tasks)} long tasks, {sum(long_tasks):,.0f} ms in all, max "
        f"{max(long_tasks, default=0):,.0f} ms ({len(charted)} of them, {sum(charted):,.0f} ms, "
        f"while drawing the charts: {len(report['chartAt'])} redraws, "
        + _percentiles(report["chartMs"], "each")
        + f"); busy {busy / seconds:.1%} of the window (script "
        f"{(after['ScriptDuration'] - before['ScriptDuration']) / seconds:.1%}, layout "
        f"{(after['LayoutDuration'] - before['LayoutDuration']) / seconds:.1%}, style "
        f"{(after['RecalcStyleDuration'] - before['RecalcStyleDuration']) / seconds:.1%})"
    )
    expected_ticks = seconds * 1000.0 / LAG_PROBE_MS
    print(
        f"timer lag ({LAG_PROBE_MS} ms setTimeout, {len(report['lags'])} of "
        f"~{expected_ticks:.0f} ticks): " + _percentiles(report["lags"], "")
    )
    frames = report["frames"]
    print(
        f"frames: {len(frames) / seconds:.1f}/s, " + _percentiles(frames, "interval")
        if frames
        else "frames: none drawn"
    )
    kpi_gaps = np.diff(report["kpiAt"]).tolist()
    print(
        f"KPI tiles: {len(report['kpiAt'])} refreshes in {seconds:.0f} s (every "
        f"{KPI_EVERY_SECONDS:g} s: {seconds / KPI_EVERY_SECONDS:.0f}); "
        + _percentiles(kpi_gaps, "interval")
        + "; "
        + _percentiles(report["kpiMs"], "request → swapped")
    )
    keys = report["keys"]
    slow = report["slowEvents"]
    print(
        f"key presses in the search box: {len(keys)}; "
        + _percentiles([k[0] for k in keys], "input delay")
        + "; "
        + _percentiles([k[1] for k in keys], "press → next frame")
        + f"; Event Timing (press → next paint): {len({i for i, _ in slow})} interactions "
        f"≥ 16 ms, {len({i for i, d in slow if d > 200})} over 200 ms"
        + (f", max {max(d for _, d in slow):.0f} ms" if slow else "")
    )

    def mib(value: float | None) -> str:
        return "–" if value is None else f"{value / MIB:.1f}"

    print(
        f"JS heap MiB: after a GC {mib(before['JSHeapUsedSize'])} at the start, "
        f"{mib(collected['JSHeapUsedSize'])} at the end; performance.memory "
        f"{mib(heap_start)} → {mib(report['heap'])}; DOM nodes {before['Nodes']:,.0f} → "
        f"{collected['Nodes']:,.0f} (in the document {report['nodes']:,}); listeners "
        f"{before['JSEventListeners']:,.0f} → {collected['JSEventListeners']:,.0f}"
    )


async def _navigations(page: Any, problems: Problems) -> None:
    """Click → paint under the same load: search for a feed transaction (Enter), the review
    queue (nav link), back to the overview (nav link) until its feed shows a row."""
    timings: dict[str, list[tuple[float, float, float]]] = {}

    async def navigate(name: str, action: Any, ready: str | None = None) -> None:
        problems.navigating = True
        started = time.perf_counter()
        async with page.expect_navigation(wait_until="load", timeout=60_000):
            await action()
        if ready:
            await page.wait_for_function(ready, timeout=60_000)
        wall = (time.perf_counter() - started) * 1000.0
        problems.navigating = False
        paint = await page.evaluate(FIRST_PAINT_JS)
        timings.setdefault(name, []).append((paint[0] or math.nan, paint[1] or math.nan, wall))

    for _ in range(NAVIGATION_ROUNDS):
        transaction = await page.eval_on_selector("#feed tr td.id a", "a => a.title")

        async def search(transaction: str = transaction) -> None:
            await page.fill("#search-q", transaction)
            await page.press("#search-q", "Enter")

        await navigate("search → transaction page", search)
        await navigate("nav → /review", lambda: page.click("nav a[href='/review']"))
        await navigate(
            "nav → / (until a feed row)",
            lambda: page.click("nav a[href='/']"),
            "document.querySelectorAll('#feed tr').length > 0",
        )
    for name, runs in timings.items():
        ttfb, fcp, wall = (np.nanmax(values) for values in zip(*runs, strict=True))
        medians = [float(np.nanmedian(values)) for values in zip(*runs, strict=True)]
        print(
            f"{name} ({len(runs)}x): first byte median {medians[0]:.0f} max {ttfb:.0f} ms, "
            f"first paint median {medians[1]:.0f} max {fcp:.0f} ms, click → loaded median "
            f"{medians[2]:.0f} max {wall:.0f} ms"
        )
