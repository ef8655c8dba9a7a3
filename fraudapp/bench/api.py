"""`fraudapp bench api`: the synchronous decision endpoint under load, from a separate process.

Starts the app with uvicorn as a subprocess (one worker, the live simulator on at 500 tx/s) on
the external PostgreSQL / Redis named by FRAUDAPP_DATABASE_URL / FRAUDAPP_REDIS_URL (a bench
database beside the configured one) or on embedded ones, waits for /readyz, then loads
`POST /api/v1/decisions` from a child process — keep-alive HTTP/1.1 over raw asyncio sockets, so
the client costs little of the CPU the server needs — with 1 client and with 64 concurrent
clients. Prints requests/s, latency percentiles and errors per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

BENCH_KEY = "bench-score-key"
BENCH_CUSTOMERS = 20_000
BENCH_TERMINALS = 5_000


def add_cli(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "api", help="POST /api/v1/decisions throughput and latency against a uvicorn subprocess"
    )
    parser.add_argument(
        "--clients",
        default="1,64",
        help="comma-separated concurrent client counts, one phase each (default 1,64)",
    )
    parser.add_argument("--requests", type=int, default=30_000, help="most requests per phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest phase, in seconds")
    parser.add_argument("--warmup-requests", type=int, default=500, help="unmeasured, per phase")
    parser.add_argument("--simulator-rate", type=float, default=500.0, help="live tx/s meanwhile")
    add_served_app_options(parser)
    parser.set_defaults(handler=run)


def add_served_app_options(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that starts the app with `serve_app`."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="app data dir (MLflow store, embedded servers); reuse one to skip training the "
        "first model (default: a temporary directory)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store holding a champion (default: data dir)"
    )


@dataclass(frozen=True)
class Phase:
    clients: int
    requests: int
    seconds: float
    errors: int
    latencies_ms: np.ndarray

    def describe(self) -> str:
        p50, p95, p99 = np.percentile(self.latencies_ms, [50, 95, 99])
        return (
            f"{self.clients:>4} client{'s' if self.clients > 1 else ' '}  "
            f"{self.requests:>7,} requests in {self.seconds:5.1f} s = "
            f"{self.requests / self.seconds:8,.0f} req/s   latency ms p50 {p50:6.2f}  "
            f"p95 {p95:6.2f}  p99 {p99:6.2f}  max {self.latencies_ms.max():7.2f}   "
            f"errors {self.errors}"
        )


def run(args: argparse.Namespace) -> int:
    clients = [int(c) for c in str(args.clients).split(",") if c.strip()]
    with ExitStack() as stack:
        app = serve_app(
            stack,
            name="api",
            data_dir=args.data_dir,
            simulator_rate=args.simulator_rate,
            tracking_uri=args.tracking_uri,
            env={"FRAUDAPP_API_KEYS": json.dumps({BENCH_KEY: ["score"]})},
        )
        print(f"ready; simulator at {args.simulator_rate:g} tx/s; loading from a child process")
        phases = []
        for count in clients:
            phase = _load(
                app.port,
                clients=count,
                requests=args.requests,
                seconds=args.seconds,
                warmup=args.warmup_requests,
            )
            phases.append(phase)
            print(phase.describe(), flush=True)
        status = httpx.get(f"{app.url}/readyz", timeout=10).json()
        pipeline = status["components"]["pipeline"]
        print(
            f"server: committed {pipeline.get('committed', 0):,} transactions, "
            f"stage means ms {pipeline.get('stage_ms')}, simulator "
            f"{pipeline.get('simulator', {}).get('emitted_transactions', 0):,} emitted"
        )
    return 0


@dataclass(frozen=True)
class ServedApp:
    """The app under uvicorn in a subprocess, ready (see `serve_app`)."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_app(
    stack: ExitStack,
    *,
    name: str,
    data_dir: Path | None,
    simulator_rate: float,
    tracking_uri: str | None = None,
    env: dict[str, str] | None = None,
) -> ServedApp:
    """Start the app under uvicorn (one worker, simulator at `simulator_rate`) and wait until
    it is ready; `stack` stops it. Database `fraudapp_bench_<name>` on the configured server,
    else embedded servers in the data dir (default: a temporary directory)."""
    from fraudapp.settings import Settings

    if data_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix=f"fraudapp-bench-{name}-")
        data_dir = Path(stack.enter_context(temporary))
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url, redis_url = _services(
        stack, Settings(), data_dir, database=f"fraudapp_bench_{name}"
    )
    port = _free_port()
    app_env = {
        **os.environ,
        "FRAUDAPP_DATA_DIR": str(data_dir),
        "FRAUDAPP_DATABASE_URL": database_url,
        "FRAUDAPP_REDIS_URL": redis_url,
        "FRAUDAPP_CACHE_KEY_PREFIX": f"fraudapp:bench-{name}:",
        "FRAUDAPP_SIMULATOR_ENABLED": "true",
        "FRAUDAPP_SIMULATOR_RATE_TPS": str(simulator_rate),
        "FRAUDAPP_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    if tracking_uri:
        app_env["FRAUDAPP_MLFLOW_TRACKING_URI"] = tracking_uri
    server = _start_server(stack, port, app_env)
    print(f"app: uvicorn pid {server.pid} on 127.0.0.1:{port}, data dir {data_dir}")
    print(f"services: {_redact(database_url)}, {redis_url}")
    _wait_ready(server, port)
    return ServedApp(server, port, data_dir)


def _services(
    stack: ExitStack, settings: object, data_dir: Path, *, database: str
) -> tuple[str, str]:
    """(database URL, Redis URL): a fresh database `database` on the configured server, or the
    embedded servers under the data dir."""
    from fraudapp.embedded import embedded_postgres, embedded_redis

    configured_db = getattr(settings, "database_url", None)
    configured_redis = getattr(settings, "redis_url", None)
    if configured_db:
        asyncio.run(_recreate_database(configured_db, database))
        stack.callback(lambda: asyncio.run(_drop_database(configured_db, database)))
        database_url = urlunsplit(urlsplit(configured_db)._replace(path=f"/{database}"))
    else:
        database_url = stack.enter_context(embedded_postgres(data_dir))
    redis_url = configured_redis or stack.enter_context(embedded_redis(data_dir))
    return database_url, redis_url


async def _recreate_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _redact(url: str) -> str:
    from fraudapp.store import redact

    return redact(url)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(stack: ExitStack, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "fraudapp.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    server = subprocess.Popen(command, env=env)

    def stop() -> None:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # graceful: drain the queue, stop the servers
            try:
                server.wait(90)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    stack.callback(stop)
    return server


def _wait_ready(server: subprocess.Popen[bytes], port: int, timeout_seconds: float = 900) -> None:
    """Poll /readyz (a brand-new data dir trains its first model first: a minute or two)."""
    deadline = time.monotonic() + timeout_seconds
    last = ""
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with status {server.returncode} before ready")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if response.status_code == 200:
                return
            model = response.json()["components"]["model"]
            state = f"model {model['state']} {model.get('stage') or ''} {model['progress']:.0%}"
            if state != last:
                print(f"waiting: {state}", flush=True)
                last = state
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app was not ready within {timeout_seconds:.0f} s")


def _load(port: int, *, clients: int, requests: int, seconds: float, warmup: int) -> Phase:
    """Run one phase in a child process (spawned: a clean interpreter, its own CPU time)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_load_process,
        args=(port, clients, requests, seconds, warmup, sender),
        name=f"bench-load-{clients}",
    )
    child.start()
    sender.close()
    try:
        elapsed, errors, raw = receiver.recv()
    finally:
        child.join(60)
    latencies = np.frombuffer(raw, dtype=np.float64)
    return Phase(clients, len(latencies), elapsed, errors, latencies)


def _load_process(
    port: int, clients: int, requests: int, seconds: float, warmup: int, sender: Connection
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    elapsed, errors, latencies = asyncio.run(
        _drive(port, clients=clients, requests=requests, seconds=seconds, warmup=warmup)
    )
    sender.send((elapsed, errors, np.asarray(latencies, dtype=np.float64).tobytes()))
    sender.close()


async def _drive(
    port: int, *, clients: int, requests: int, seconds: float, warmup: int
) -> tuple[float, int, list[float]]:
    run_id = f"{os.getpid()}-{time.time_ns() % 10**9}"
    counter = iter(range(10**12))
    rng = random.Random(11)

    def request() -> bytes:
        n = next(counter)
        body = (
            f'{{"transaction_id":"b{run_id}-{n}","customer_id":"B{rng.randrange(BENCH_CUSTOMERS)}",'
            f'"terminal_id":"BT{rng.randrange(BENCH_TERMINALS)}",'
            f'"amount":{rng.lognormvariate(3.5, 1.0):.2f}}}'
        ).encode()
        return (
            b"POST /api/v1/decisions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"X-API-Key: " + BENCH_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    async def client(budget: list[int], deadline: float, out: list[float]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        errors = 0
        try:
            while budget[0] > 0 and time.perf_counter() < deadline:
                budget[0] -= 1
                payload = request()
                started = time.perf_counter()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                out.append((time.perf_counter() - started) * 1000.0)
                if head[9:12] != b"200":
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()
        return errors

    async def phase(total: int, limit_seconds: float) -> tuple[float, int, list[float]]:
        budget = [total]
        out: list[float] = []
        started = time.perf_counter()
        deadline = started + limit_seconds
        errors = await asyncio.gather(*(client(budget, deadline, out) for _ in range(clients)))
        return time.perf_counter() - started, sum(errors), out

    await phase(warmup, 30.0)
    return await phase(requests, seconds)
