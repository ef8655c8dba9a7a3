"""The JSON API's write path: synchronous decisions and asynchronous ingest, auth and errors."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from .api_support import ADMIN, ANALYST, SCORE, running_app, transaction
from .conftest import make_settings, wait_until


async def stored_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM transaction"))


async def test_a_decision_scores_now_and_stores_the_transaction(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    before = datetime.now(UTC)
    response = await app_client.post("/api/v1/decisions", json=transaction("d-1"), headers=SCORE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transaction_id"] == "d-1"
    assert body["decision"] in ("approve", "review", "decline")
    assert 0 <= body["score"] <= 99
    assert 0.0 <= body["probability"] <= 1.0
    assert body["model_version"] == "1"
    assert isinstance(body["reasons"], list)
    assert before <= datetime.fromisoformat(body["server_time"]) <= datetime.now(UTC)
    # Defaults: now, EUR, card_present.
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(body["timestamp"])

    async def stored() -> asyncpg.Record | None:
        return await pool.fetchrow(
            "SELECT t.currency, t.channel, t.amount, d.score, d.decision FROM transaction t "
            "JOIN decision d USING (transaction_id) WHERE transaction_id = 'd-1'"
        )

    row = await wait_until(stored)
    assert (row["currency"], row["channel"], float(row["amount"])) == ("EUR", "card_present", 42.5)
    assert (row["score"], row["decision"]) == (body["score"], body["decision"])


async def test_the_same_id_twice_returns_the_first_decision_and_stores_one_row(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first = await app_client.post("/api/v1/decisions", json=transaction("d-2"), headers=SCORE)
    # A different body with the same id: still the first decision.
    second = await app_client.post(
        "/api/v1/decisions", json=transaction("d-2", amount=9999.99), headers=SCORE
    )
    assert first.status_code == second.status_code == 200
    fields = ("transaction_id", "decision", "score", "probability", "reasons", "timestamp")
    assert {k: first.json()[k] for k in fields} == {k: second.json()[k] for k in fields}
    await wait_until(lambda: stored_count(pool))
    # A third time after the commit (answered from the database or the recent decisions).
    third = await app_client.post("/api/v1/decisions", json=transaction("d-2"), headers=SCORE)
    assert third.json()["score"] == first.json()["score"]
    assert await pool.fetchval("SELECT count(*) FROM decision WHERE transaction_id='d-2'") == 1
    assert float(await pool.fetchval("SELECT amount FROM transaction")) == 42.5


async def test_the_fast_path_and_the_route_answer_alike(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """`application/json` is answered by the ASGI fast path; a `+json` type goes to the route.
    Both must give the same decision in the same shape, whichever answers first."""
    routed = {"content-type": "application/vnd.fraudapp+json"}
    fast = await app_client.post("/api/v1/decisions", json=transaction("fp-1"), headers=SCORE)
    again = await app_client.post(
        "/api/v1/decisions", content=_json(transaction("fp-1")), headers=SCORE | routed
    )
    assert fast.status_code == again.status_code == 200, again.text
    assert fast.headers["content-type"] == again.headers["content-type"] == "application/json"
    first, second = fast.json(), again.json()
    assert set(first) == set(second)
    assert {k: v for k, v in first.items() if k != "server_time"} == {
        k: v for k, v in second.items() if k != "server_time"
    }

    # A body that arrives in pieces is read whole; an invalid one is replayed to the route,
    # which names the field.
    async def pieces(payload: dict[str, Any]) -> AsyncIterator[bytes]:
        encoded = _json(payload)
        yield encoded[:10]
        yield encoded[10:]

    json_type = {"content-type": "application/json"}
    chunked = await app_client.post(
        "/api/v1/decisions", content=pieces(transaction("fp-2")), headers=SCORE | json_type
    )
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["transaction_id"] == "fp-2"
    invalid = await app_client.post(
        "/api/v1/decisions",
        content=pieces(transaction("fp-3", amount=-1)),
        headers=SCORE | json_type,
    )
    assert invalid.status_code == 422
    assert "body.amount: must be greater than 0" in invalid.json()["detail"]
    await wait_until(lambda: _stored_is(pool, 2))
    ids = await pool.fetch("SELECT transaction_id FROM decision ORDER BY transaction_id")
    assert [r["transaction_id"] for r in ids] == ["fp-1", "fp-2"]


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


async def _stored_is(pool: asyncpg.Pool, count: int) -> bool:
    return await stored_count(pool) == count


async def test_optional_fields_are_stored_as_given(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    at = "2026-01-05T10:30:00+01:00"
    body = transaction(
        "d-3",
        currency="USD",
        channel="online",
        merchant_category="5411",
        terminal_lat=48.85,
        terminal_lon=2.35,
        timestamp=at,
    )
    response = await app_client.post("/api/v1/decisions", json=body, headers=SCORE)
    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["timestamp"]) == datetime.fromisoformat(at)
    row = await wait_until(
        lambda: pool.fetchrow("SELECT * FROM transaction WHERE transaction_id = 'd-3'")
    )
    assert row["occurred_at"] == datetime.fromisoformat(at)
    assert (row["currency"], row["channel"], row["merchant_category"]) == ("USD", "online", "5411")
    assert (row["terminal_lat"], row["terminal_lon"]) == (48.85, 2.35)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": 0}, "body.amount: must be greater than 0"),
        ({"amount": -3}, "body.amount: must be greater than 0"),
        ({"amount": 1.234}, "body.amount: "),
        ({"amount": 2e9}, "body.amount: must be less than or equal to 1000000000"),
        ({"currency": "eur"}, "body.currency: must match pattern"),
        ({"channel": "phone"}, "body.channel: must be 'card_present' or 'online'"),
        ({"transaction_id": "has space"}, "body.transaction_id: must match pattern"),
        ({"transaction_id": "x" * 65}, "body.transaction_id: must have at most 64 characters"),
        ({"merchant_category": "54a1"}, "body.merchant_category: must match pattern"),
        ({"terminal_lat": 91}, "body.terminal_lat: must be less than or equal to 90"),
        ({"timestamp": "2026-01-05T10:30:00"}, "body.timestamp: must have timezone info"),
        ({"timestamp": "2999-01-01T00:00:00Z"}, "body.timestamp: must not be more than a day"),
        ({"colour": "red"}, "body.colour: is not a known field"),
        ({"customer_id": None}, "body.customer_id: must be a valid string"),
    ],
)
async def test_invalid_transactions_get_422_naming_the_field_and_nothing_is_written(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool, change: dict[str, Any], message: str
) -> None:
    body = transaction("bad-1") | change
    for path, payload in (
        ("/api/v1/decisions", body),
        ("/api/v1/transactions", {"transactions": [transaction("ok-1"), body]}),
    ):
        response = await app_client.post(path, json=payload, headers=SCORE)
        assert response.status_code == 422, response.text
        error = response.json()
        assert set(error) == {"error", "detail"}
        assert error["error"] == "invalid_input"
        if path.endswith("transactions"):
            message = message.replace("body.", "body.transactions.1.")
        assert message in error["detail"]
    assert await stored_count(pool) == 0


async def test_missing_fields_and_broken_json_are_named(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/api/v1/decisions", json={"transaction_id": "x"}, headers=SCORE
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    for field in ("customer_id", "terminal_id", "amount"):
        assert f"body.{field}: is required" in detail
    response = await app_client.post(
        "/api/v1/decisions",
        content=b'{"transaction_id": ',
        headers=SCORE | {"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


async def test_writes_need_a_key_with_the_score_scope(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = transaction("auth-1")
    for path, payload in (
        ("/api/v1/decisions", body),
        ("/api/v1/transactions", {"transactions": [body]}),
    ):
        missing = await app_client.post(path, json=payload)
        assert missing.status_code == 401
        assert missing.json() == {
            "error": "unauthorized",
            "detail": "this endpoint needs an API key in the X-API-Key header",
        }
        wrong = await app_client.post(path, json=payload, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "the API key is not valid"
        analyst = await app_client.post(path, json=payload, headers=ANALYST)
        assert analyst.status_code == 403
        assert analyst.json()["error"] == "forbidden"
        assert "'score' scope" in analyst.json()["detail"]
        # An invalid body without a key is still 401: auth comes first.
        assert (await app_client.post(path, json={})).status_code == 401
    admin = await app_client.post("/api/v1/decisions", json=body, headers=ADMIN)
    assert admin.status_code == 200  # admin implies every scope
    await wait_until(lambda: stored_count(pool))
    assert await stored_count(pool) == 1


async def test_ingest_accepts_a_batch_and_the_decisions_appear(
    app_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    batch = [transaction(f"i-{i}", customer_id=f"C{i % 7}", amount=10 + i) for i in range(50)]
    batch.append(transaction("i-0"))  # a repeat within the request counts once
    response = await app_client.post(
        "/api/v1/transactions", json={"transactions": batch}, headers=SCORE
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 50
    assert body["transaction_ids"] == [f"i-{i}" for i in range(50)]

    async def all_stored() -> bool:
        return await pool.fetchval("SELECT count(*) FROM decision") == 50

    await wait_until(all_stored)
    listed = await app_client.get("/api/v1/transactions", params={"limit": 500})
    assert {t["transaction_id"] for t in listed.json()["items"]} == set(body["transaction_ids"])


async def test_ingest_over_the_limit_is_413_and_writes_nothing(
    database_url: str, redis_url: str, tracking_uri: str, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        mlflow_tracking_uri=tracking_uri,
        api_keys={"score-key": ["score"]},
        ingest_max_transactions=5,
    )
    async with running_app(settings) as client:
        batch = [transaction(f"big-{i}") for i in range(6)]
        response = await client.post(
            "/api/v1/transactions", json={"transactions": batch}, headers=SCORE
        )
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
        assert "at most 5" in response.json()["detail"]
        empty = await client.post("/api/v1/transactions", json={"transactions": []}, headers=SCORE)
        assert empty.status_code == 422
        ok = await client.post(
            "/api/v1/transactions", json={"transactions": batch[:5]}, headers=SCORE
        )
        assert ok.status_code == 202
        await wait_until(lambda: _count_is(pool, 5))
    assert await pool.fetchval("SELECT count(*) FROM transaction WHERE transaction_id='big-5'") == 0


async def _count_is(pool: asyncpg.Pool, n: int) -> bool:
    return await stored_count(pool) == n


async def test_a_saturated_queue_is_503_with_retry_after(
    database_url: str,
    redis_url: str,
    tracking_uri: str,
    tmp_path: Path,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path,
        mlflow_tracking_uri=tracking_uri,
        api_keys={"score-key": ["score"]},
        queue_max_chunks=2,
    )
    async with running_app(settings) as client:
        pipeline = client.runtime.engine.pipeline  # type: ignore[attr-defined]
        release = threading.Event()
        # Hold the scoring thread: the worker takes one chunk and waits, the queue fills.
        blocker = asyncio.ensure_future(pipeline.run_on_scoring_thread(release.wait, 30))
        statuses = []
        try:
            # The worker gathers what arrives within BATCH_MAX_WAIT_MS before it blocks.
            for i in range(200):
                response = await client.post(
                    "/api/v1/transactions",
                    json={"transactions": [transaction(f"s-{i}")]},
                    headers=SCORE,
                )
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.headers["Retry-After"] == "1"
                    assert response.json()["error"] == "saturated"
                    break
        finally:
            release.set()
            await blocker
        assert statuses[-1] == 503 and set(statuses[:-1]) == {202}
        accepted = len(statuses) - 1
        await wait_until(lambda: _count_is(pool, accepted))
