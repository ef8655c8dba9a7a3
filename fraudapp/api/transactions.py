"""Transactions in and out: synchronous decisions, asynchronous ingest, listing and detail.

`POST /decisions` is the hot path: one pydantic validation of the body, one `Pipeline.decide`
(concurrent requests share one model call on the scoring thread, and the transaction goes to
the writers like any other), one orjson serialisation. Ingest puts a whole request on the
bounded queue as one chunk or answers 503. Listing pages by an opaque keyset cursor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from fraudapp.api.responses import JSONBytes, errors
from fraudapp.auth import ReaderDep, ScoreDep
from fraudapp.deps import RuntimeDep
from fraudapp.errors import Conflict, InvalidInput, NotFound
from fraudapp.operations import running_pipeline
from fraudapp.pipeline import Pipeline
from fraudapp.store import reads
from fraudapp.transactions import TransactionBatch

router = APIRouter(tags=["transactions"])

ID_CHARS = r"^[A-Za-z0-9_.:-]+$"
Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=ID_CHARS,
        description="1–64 characters of A–Z a–z 0–9 _ . : -",
        examples=["tx-0001"],
    ),
]
Decision = Literal["approve", "review", "decline"]
Rule = Literal["block_list", "allow_list"]
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)


class TransactionIn(BaseModel):
    """One card transaction as a processor sends it; only ids and amount are required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "transaction_id": "tx-0001",
                    "customer_id": "C000042",
                    "terminal_id": "T001337",
                    "amount": 129.90,
                }
            ]
        },
    )

    transaction_id: Identifier
    customer_id: Identifier
    terminal_id: Identifier
    amount: Decimal = Field(
        gt=0, le=1_000_000_000, decimal_places=2, description="> 0, at most 2 decimals"
    )
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    channel: Literal["card_present", "online"] = "card_present"
    merchant_category: str | None = Field(
        None, pattern=r"^[0-9]{4}$", description="ISO 18245 merchant category code"
    )
    terminal_lat: float | None = Field(None, ge=-90, le=90)
    terminal_lon: float | None = Field(None, ge=-180, le=180)
    timestamp: AwareDatetime | None = Field(
        None, description="When it happened, with a time zone (default: now)"
    )

    @field_validator("timestamp")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        if value < EARLIEST:
            raise ValueError("must not be before 2000-01-01")
        if value > datetime.now(UTC) + FUTURE_SLACK:
            raise ValueError("must not be more than a day in the future")
        return value


def to_batch(transactions: list[TransactionIn], now: datetime) -> TransactionBatch:
    """Columns of validated transactions, defaults filled (timestamp = now, UTC)."""
    nan = float("nan")
    return TransactionBatch(
        transaction_id=np.array([t.transaction_id for t in transactions], dtype=object),
        timestamp=np.array(
            [(t.timestamp or now).astimezone(UTC).replace(tzinfo=None) for t in transactions],
            dtype="datetime64[us]",
        ),
        customer_id=np.array([t.customer_id for t in transactions], dtype=object),
        terminal_id=np.array([t.terminal_id for t in transactions], dtype=object),
        merchant_category=np.array([t.merchant_category for t in transactions], dtype=object),
        amount=np.array([float(t.amount) for t in transactions], dtype=np.float64),
        currency=np.array([t.currency for t in transactions], dtype=object),
        channel=np.array([t.channel for t in transactions], dtype=object),
        terminal_lat=np.array(
            [nan if t.terminal_lat is None else t.terminal_lat for t in transactions]
        ),
        terminal_lon=np.array(
            [nan if t.terminal_lon is None else t.terminal_lon for t in transactions]
        ),
    )


class Reason(BaseModel):
    code: str = Field(examples=["CUSTOMER_AMOUNT_RATIO_30D"])
    feature: str
    value: float | None
    text: str = Field(examples=["amount is 6.2× this customer's 30-day mean"])
    contribution: float = Field(description="push towards fraud, in log-odds")


class DecisionOut(BaseModel):
    transaction_id: str
    decision: Decision
    score: int = Field(ge=0, le=99, description="risk score: fraud probability in whole percent")
    probability: float
    rule: Rule | None = Field(description="a list entry that overrode the score, if any")
    reasons: list[Reason] = Field(description="top reasons, for review and decline")
    model_version: str
    timestamp: datetime = Field(description="the transaction's time")
    server_time: datetime = Field(description="when this answer was made")


@router.post(
    "/decisions",
    summary="Score one transaction now",
    response_model=DecisionOut,
    responses=errors(401, 403, 422, 503),
)
async def create_decision(
    transaction: TransactionIn, runtime: RuntimeDep, principal: ScoreDep
) -> JSONBytes:
    """Features from the live state, the champion model, the policy and the reasons; the
    transaction is then stored and updates the feature state like any other. Sending the same
    `transaction_id` again returns the first decision."""
    return JSONBytes(await decide_one(running_pipeline(runtime), transaction))


async def decide_one(pipeline: Pipeline, transaction: TransactionIn) -> dict[str, Any]:
    """The `DecisionOut` of one transaction (shared with `fraudapp.api.fastpath`)."""
    (row,) = await pipeline.decide(to_batch([transaction], datetime.now(UTC)))
    return {
        "transaction_id": row["transaction_id"],
        "decision": row["decision"],
        "score": row["score"],
        "probability": row["probability"],
        "rule": row["rule"],
        "reasons": row["reasons"],
        "model_version": row["model_version"],
        "timestamp": row["timestamp"],
        "server_time": datetime.now(UTC),
    }


class IngestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transactions: list[TransactionIn] = Field(
        min_length=1, description="at most FRAUDAPP_INGEST_MAX_TRANSACTIONS (default 1,000)"
    )


class IngestOut(BaseModel):
    accepted: int
    transaction_ids: list[str] = Field(
        description="accepted ids (an id already stored is kept with its first decision)"
    )
    queue_depth: int = Field(description="chunks waiting in the ingest queue")


@router.post(
    "/transactions",
    summary="Ingest a batch for asynchronous scoring",
    status_code=202,
    response_model=IngestOut,
    responses=errors(401, 403, 413, 422, 503),
)
async def ingest_transactions(body: IngestIn, runtime: RuntimeDep, principal: ScoreDep) -> Any:
    """Queued as one chunk and scored within milliseconds; 503 with Retry-After when the
    queue is full. Results appear under `GET /transactions`."""
    limit = runtime.settings.ingest_max_transactions
    if len(body.transactions) > limit:
        raise HTTPException(
            413,
            f"{len(body.transactions)} transactions in one request; at most {limit} "
            "(FRAUDAPP_INGEST_MAX_TRANSACTIONS): split the batch",
        )
    pipeline = running_pipeline(runtime)
    pipeline.offer(to_batch(body.transactions, datetime.now(UTC)))
    ids = list(dict.fromkeys(t.transaction_id for t in body.transactions))
    return {"accepted": len(ids), "transaction_ids": ids, "queue_depth": pipeline.queue.qsize()}


class TransactionOut(BaseModel):
    transaction_id: str
    timestamp: datetime
    customer_id: str
    terminal_id: str
    merchant_category: str | None
    amount: float
    currency: str
    channel: str
    terminal_lat: float | None
    terminal_lon: float | None
    received_at: datetime
    decided_at: datetime
    probability: float
    score: int
    decision: Decision
    rule: Rule | None
    reasons: list[Reason]
    model_version: str
    latency_ms: float


class TransactionPage(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


def transaction_out(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["timestamp"] = out.pop("occurred_at")
    out.pop("features", None)
    return out


def encode_cursor(row: dict[str, Any]) -> str:
    raw = orjson.dumps([row["occurred_at"].isoformat(), row["transaction_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, tx_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = datetime.fromisoformat(at)
        if position.tzinfo is None or not isinstance(tx_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidInput("query.cursor: not a cursor this API gave out") from None
    return position, tx_id


@router.get(
    "/transactions",
    summary="List transactions with their decisions, newest first",
    response_model=TransactionPage,
    responses=errors(401, 422),
)
async def list_transactions(
    runtime: RuntimeDep,
    principal: ReaderDep,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    terminal_id: Annotated[str | None, Query(max_length=64)] = None,
    decision: Decision | None = None,
    min_score: Annotated[int | None, Query(ge=0, le=99)] = None,
    since: Annotated[AwareDatetime | None, Query(description="occurred at or after")] = None,
    until: Annotated[AwareDatetime | None, Query(description="occurred before")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    rows = await reads.list_transactions(
        runtime.pool,
        customer_id=customer_id,
        terminal_id=terminal_id,
        decision=decision,
        min_score=min_score,
        since=since,
        until=until,
        before=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [transaction_out(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1]) if more else None,
    }


class Contribution(BaseModel):
    feature: str
    value: float | None
    contribution: float = Field(description="exact SHAP value, in log-odds")


class Explanation(BaseModel):
    method: Literal["exact"] = "exact"
    model_version: str
    base_value: float = Field(description="the model's expected margin (bias)")
    margin: float = Field(description="base_value + sum of contributions")
    contributions: list[Contribution] = Field(description="largest push towards fraud first")


class LabelOut(BaseModel):
    transaction_id: str
    verdict: Literal["fraud", "legitimate"]
    is_fraud: bool
    source: str
    labelled_by: str | None
    known_at: datetime


class StoredLabel(LabelOut):
    label_id: int
    created_at: datetime


class TransactionDetail(TransactionOut):
    features: dict[str, float | None] | None = Field(
        description="the model's inputs as scored (None when the model version is gone)"
    )
    explanation: Explanation | None = Field(description="with ?explain=exact")
    verdict: Literal["fraud", "legitimate"] | None = Field(description="the label in force")
    labels: list[StoredLabel] = Field(description="label history, latest known first")


@router.get(
    "/transactions/{transaction_id}",
    summary="One transaction: decision, reasons, features, exact SHAP on request, labels",
    response_model=TransactionDetail,
    responses=errors(401, 404, 409, 422),
)
async def get_transaction(
    runtime: RuntimeDep,
    principal: ReaderDep,
    transaction_id: Annotated[str, Path(max_length=64)],
    explain: Annotated[
        Literal["exact"] | None,
        Query(description="`exact`: TreeSHAP contributions (a few ms)"),
    ] = None,
) -> Any:
    row = await reads.fetch_transaction(runtime.pool, transaction_id=transaction_id)
    if row is None:
        raise NotFound(f"transaction {transaction_id!r} is not stored")
    labels = await reads.fetch_labels(runtime.pool, transaction_id=transaction_id)
    out = transaction_out(row)
    out["labels"] = [
        {**label, "transaction_id": transaction_id, "verdict": verdict(label["is_fraud"])}
        for label in labels
    ]
    out["verdict"] = verdict(labels[0]["is_fraud"]) if labels else None
    out["features"], out["explanation"] = None, None
    raw: bytes | None = row["features"]
    try:
        model = await runtime.models.load(runtime, row["model_version"])
    except NotFound:
        if explain:
            raise
        return out
    if raw is None or len(raw) != 4 * len(model.feature_names):
        if explain:
            raise Conflict(f"transaction {transaction_id!r} has no stored features to explain")
        return out
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    out["features"] = {
        name: None if np.isnan(v) else float(v)
        for name, v in zip(model.feature_names, values, strict=True)
    }
    if explain:
        shap = (await asyncio.to_thread(model.exact_contributions, values[None, :]))[0]
        n = len(model.feature_names)
        order = np.argsort(-shap[:n], kind="stable")
        out["explanation"] = {
            "model_version": model.version,
            "base_value": float(shap[n]),
            "margin": float(shap.sum()),
            "contributions": [
                {
                    "feature": model.feature_names[i],
                    "value": None if np.isnan(values[i]) else float(values[i]),
                    "contribution": float(shap[i]),
                }
                for i in order
            ],
        }
    return out


def verdict(is_fraud: bool) -> Literal["fraud", "legitimate"]:
    return "fraud" if is_fraud else "legitimate"
