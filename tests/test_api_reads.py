"""The JSON API's reads: listing and detail, customers, high-risk alerts, stats, metrics, auth."""

from __future__ import annotations

import math
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from fraudapp import auth
from fraudapp.settings import Settings
from fraudapp.store import reads

from .api_support import ADMIN, ANALYST, SCORE, running_app, transaction
from .conftest import make_settings, wait_until


async def decide(client: httpx.AsyncClient, tx_id: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/decisions", json=transaction(tx_id, **fields), headers=SCORE
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def committed(pool: asyncpg.Pool, n: int) -> None:
    async def done() -> bool:
        return await pool.fetchval("SELECT count(*) FROM decision") >= n

    await wait_until(done)


async def test_listing_filters_and_pages_with_a_cursor(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    start = datetime.now(UTC) - timedelta(hours=3)
    for i in range(23):
        await decide(
            app_client,
            f"l-{i:02d}",
            customer_id=f"C{i % 3}",
            terminal_id=f"T{i % 2}",
            timestamp=(start + timedelta(minutes=i)).isoformat(),
        )
    await committed(pool, 23)

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = (await app_client.get("/api/v1/transactions", params=params)).json()
        seen += [t["transaction_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"l-{i:02d}" for i in reversed(range(23))]  # newest first, each once

    by_customer = (
        await app_client.get("/api/v1/transactions", params={"customer_id": "C1", "limit": 100})
    ).json()["items"]
    assert {t["transaction_id"] for t in by_customer} == {f"l-{i:02d}" for i in range(1, 23, 3)}
    both = (
        await app_client.get(
            "/api/v1/transactions", params={"customer_id": "C1", "terminal_id": "T0"}
        )
    ).json()["items"]
    assert {t["transaction_id"] for t in both} == {
        f"l-{i:02d}" for i in range(23) if i % 3 == 1 and i % 2 == 0
    }
    window = {
        "since": (start + timedelta(minutes=5)).isoformat(),
        "until": (start + timedelta(minutes=10)).isoformat(),
    }
    in_window = (await app_client.get("/api/v1/transactions", params=window)).json()["items"]
    assert [t["transaction_id"] for t in in_window] == [f"l-{i:02d}" for i in range(9, 4, -1)]

    scores = await pool.fetch("SELECT score, decision FROM decision")
    threshold = sorted(r["score"] for r in scores)[len(scores) // 2]
    high = (
        await app_client.get("/api/v1/transactions", params={"min_score": threshold, "limit": 100})
    ).json()["items"]
    assert len(high) == sum(r["score"] >= threshold for r in scores)
    assert all(t["score"] >= threshold for t in high)
    decision = scores[0]["decision"]
    same = (
        await app_client.get("/api/v1/transactions", params={"decision": decision, "limit": 100})
    ).json()["items"]
    assert len(same) == sum(r["decision"] == decision for r in scores)

    bad = await app_client.get("/api/v1/transactions", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]
    bad = await app_client.get("/api/v1/transactions", params={"decision": "maybe"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("query.decision: ")
    bad = await app_client.get("/api/v1/transactions", params={"since": "2026-01-01T00:00:00"})
    assert bad.status_code == 422 and "timezone" in bad.json()["detail"]


async def test_detail_explains_exactly_from_the_stored_features(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    decided = await decide(app_client, "x-1", amount=4321.0, channel="online")
    await committed(pool, 1)
    plain = (await app_client.get("/api/v1/transactions/x-1")).json()
    assert plain["score"] == decided["score"] and plain["explanation"] is None
    assert plain["amount"] == 4321.0 and plain["channel"] == "online"
    assert plain["labels"] == [] and plain["verdict"] is None
    features = plain["features"]
    assert features and "customer_count_1d" in features

    response = await app_client.get("/api/v1/transactions/x-1", params={"explain": "exact"})
    assert response.status_code == 200, response.text
    explanation = response.json()["explanation"]
    contributions = explanation["contributions"]
    assert {c["feature"] for c in contributions} == set(features)
    total = explanation["base_value"] + sum(c["contribution"] for c in contributions)
    assert total == pytest.approx(explanation["margin"], abs=1e-3)
    # TreeSHAP adds up to the model's margin: its sigmoid is the stored probability.
    assert 1 / (1 + math.exp(-explanation["margin"])) == pytest.approx(
        decided["probability"], abs=1e-4
    )
    values = [c["contribution"] for c in contributions]
    assert values == sorted(values, reverse=True)

    missing = await app_client.get("/api/v1/transactions/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "transaction 'nope' is not stored"}
    bad = await app_client.get("/api/v1/transactions/x-1", params={"explain": "approx"})
    assert bad.status_code == 422


async def test_a_customer_page_shows_activity_features_flag_and_lists(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    entry = await app_client.post(
        "/api/v1/lists",
        json={"list": "block", "entity_type": "customer", "entity_id": "C7", "reason": "test"},
        headers=ANALYST,
    )
    assert entry.status_code == 201, entry.text
    for i in range(4):
        await decide(app_client, f"c-{i}", customer_id="C7", amount=10.0 * (i + 1))
    await committed(pool, 4)

    async def flagged() -> dict[str, Any] | None:
        body: dict[str, Any] = (await app_client.get("/api/v1/customers/C7")).json()
        return body if body["high_risk"]["flagged"] else None

    customer = await wait_until(flagged)  # the writer updates Redis after the commit
    assert customer["transactions"] == 4 and customer["alerts"] == 4  # blocked: all declined
    assert customer["amount"] == pytest.approx(100.0)
    assert [t["transaction_id"] for t in customer["recent_transactions"]] == [
        "c-3",
        "c-2",
        "c-1",
        "c-0",
    ]
    assert [p["transaction_id"] for p in customer["score_history"]] == ["c-0", "c-1", "c-2", "c-3"]
    assert customer["features"]["customer_count_1d"] == 4
    assert customer["features"]["customer_mean_amount_1d"] == pytest.approx(25.0)
    assert customer["high_risk"]["source"] == "redis"
    assert [e["entry_id"] for e in customer["lists"]] == [entry.json()["entry_id"]]

    assert (await app_client.get("/api/v1/customers/nobody")).status_code == 404


async def test_high_risk_falls_back_to_postgres_when_redis_is_down_and_scoring_goes_on(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool, unused_tcp_port: int
) -> None:
    await app_client.post(
        "/api/v1/lists",
        json={"list": "block", "entity_type": "customer", "entity_id": "C9", "reason": "test"},
        headers=ANALYST,
    )
    await decide(app_client, "h-1", customer_id="C9")

    async def cached() -> list[dict[str, Any]]:
        body = (await app_client.get("/api/v1/alerts/high-risk")).json()
        assert body["source"] == "redis"
        return [c for c in body["customers"] if c["customer_id"] == "C9"]

    (from_redis,) = await wait_until(cached)
    assert from_redis["transaction_id"] == "h-1" and from_redis["decision"] == "decline"

    # Point every user of Redis at a closed port: the app must keep scoring and answering.
    runtime = app_client.runtime  # type: ignore[attr-defined]
    dead = aioredis.Redis(
        host="127.0.0.1", port=unused_tcp_port, socket_connect_timeout=0.5, decode_responses=True
    )
    healthy = runtime.redis
    runtime.redis = runtime.engine.redis = runtime.engine.pipeline.redis = dead
    try:
        body = (await app_client.get("/api/v1/alerts/high-risk")).json()
        assert body["source"] == "database" and body["cache_error"]
        (from_db,) = [c for c in body["customers"] if c["customer_id"] == "C9"]
        assert {k: from_db[k] for k in ("transaction_id", "score", "decision")} == {
            k: from_redis[k] for k in ("transaction_id", "score", "decision")
        }
        await decide(app_client, "h-2", customer_id="C10")
        await committed(pool, 2)
        customer = (await app_client.get("/api/v1/customers/C9")).json()
        assert customer["high_risk"] == {"flagged": None, "score": None, "source": "unavailable"}
    finally:
        runtime.redis = runtime.engine.redis = runtime.engine.pipeline.redis = healthy
        await dead.aclose()


async def test_stats_aggregate_the_window_and_reject_unknown_windows(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for i in range(12):
        await decide(app_client, f"s-{i}", customer_id=f"C{i}")
    await committed(pool, 12)
    await app_client.post(
        "/api/v1/labels", json={"transaction_id": "s-0", "verdict": "fraud"}, headers=ANALYST
    )
    await app_client.post(
        "/api/v1/labels", json={"transaction_id": "s-1", "verdict": "legitimate"}, headers=ANALYST
    )
    response = await app_client.get("/api/v1/stats", params={"window": "15m"})
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["volume"] == 12
    assert sum(stats["decisions"].values()) == 12
    assert sum(b["count"] for b in stats["score_histogram"]) == 12
    assert len(stats["score_histogram"]) == 10
    assert (stats["labelled"], stats["frauds"], stats["fraud_rate"]) == (2, 1, 0.5)
    assert stats["throughput_tps"] == pytest.approx(12 / 900)
    latency = stats["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"]
    assert sum(p["volume"] for p in stats["series"]) == 12
    assert stats["pipeline"]["ready"] is True
    empty = (await app_client.get("/api/v1/stats")).json()  # default 1h
    assert empty["window"] == "1h" and empty["volume"] == 12
    bad = await app_client.get("/api/v1/stats", params={"window": "2h"})
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("query.window: must be '15m', '1h', '24h' or '7d'")


async def test_metrics_are_prometheus_text(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await decide(app_client, "m-1")
    await committed(pool, 1)

    async def counted() -> str | None:
        text = (await app_client.get("/metrics")).text
        return text if "fraudapp_transactions_total{" in text else None

    text = await wait_until(counted)
    assert 'fraudapp_model_info{version="' in text


async def test_unknown_routes_and_methods_get_the_error_shape(
    app_client: httpx.AsyncClient,
) -> None:
    missing = await app_client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = await app_client.put("/api/v1/decisions", json={})
    assert wrong.status_code == 405
    assert wrong.json() == {"error": "method_not_allowed", "detail": "Method Not Allowed"}


async def test_an_unexpected_error_is_a_logged_500_in_the_error_shape(
    app_settings: Settings,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-internal-state 0xdeadbeef")

    async with running_app(app_settings, raise_app_exceptions=False) as client:
        monkeypatch.setattr(reads, "fetch_stats", broken)
        response = await client.get("/api/v1/stats")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == "internal_error"
    assert "unexpected error" in body["detail"] and "logged" in body["detail"]
    assert "secret-internal-state" not in response.text and "RuntimeError" not in response.text
    (record,) = [r for r in caplog.records if r.message.startswith("api.unexpected_error")]
    assert "path=/api/v1/stats" in record.message
    assert record.exc_info is not None and "secret-internal-state" in str(record.exc_info[1])


async def test_reads_can_require_a_key(
    database_url: str, redis_url: str, tracking_uri: str, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        mlflow_tracking_uri=tracking_uri,
        api_keys={"score-key": ["score"]},
        read_requires_key=True,
    )
    async with running_app(settings) as client:
        for path in ("/api/v1/transactions", "/api/v1/stats", "/metrics", "/api/v1/lists"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers={"X-API-Key": "bad"})).status_code == 401
            assert (await client.get(path, headers=SCORE)).status_code == 200, path
        assert (await client.get("/readyz")).status_code == 200  # health stays open


async def test_without_configured_keys_one_all_scope_key_is_created_0600(
    database_url: str,
    redis_url: str,
    tracking_uri: str,
    tmp_path: Path,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path, mlflow_tracking_uri=tracking_uri)
    async with running_app(settings) as client:
        path = tmp_path / "api_key"
        key = path.read_text().strip()
        assert len(key) >= 32
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        headers = {"X-API-Key": key}
        assert (await client.get("/api/v1/simulator", headers=headers)).status_code == 200
        response = await client.post("/api/v1/decisions", json=transaction("k-1"), headers=headers)
        assert response.status_code == 200
        assert (await client.get("/api/v1/simulator", headers=ADMIN)).status_code == 401
    # A second start keeps the key; the log names the file, never the key.
    caplog.set_level("INFO", logger="fraudapp.auth")
    again = auth.load_keys(Settings(data_dir=tmp_path))
    assert again.identify(key) is not None
    assert str(path.resolve()) in caplog.text and key not in caplog.text
