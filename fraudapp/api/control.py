"""What changes the system: labels, block and allow lists, models, the simulator; and metrics.

Every route here is a thin edge over `fraudapp.operations` (which the dashboard calls too):
validate, check the scope, call the operation, shape the answer.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.responses import Response

from fraudapp import operations
from fraudapp.api.insights import ListEntryOut, list_entry_out
from fraudapp.api.responses import errors
from fraudapp.api.transactions import Identifier, LabelOut, verdict
from fraudapp.auth import AdminDep, AnalystDep, ReaderDep
from fraudapp.deps import RuntimeDep
from fraudapp.store import reads

router = APIRouter()


# --- labels -----------------------------------------------------------------------------------


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transaction_id: Identifier
    verdict: Literal["fraud", "legitimate"]
    labelled_by: str | None = Field(
        None, min_length=1, max_length=100, description="who (default: the API key's name)"
    )


@router.post(
    "/labels",
    tags=["labels"],
    summary="Record an analyst's verdict on a transaction",
    status_code=201,
    response_model=LabelOut,
    responses=errors(401, 403, 404, 422, 503),
)
async def create_label(body: LabelIn, runtime: RuntimeDep, principal: AnalystDep) -> Any:
    """Stored with who and when; updates the terminal's fraud risk in the feature state at once
    and becomes training data. The latest verdict on a transaction is the one in force."""
    label = await operations.label_transaction(
        runtime,
        transaction_id=body.transaction_id,
        is_fraud=body.verdict == "fraud",
        labelled_by=body.labelled_by or principal.name,
    )
    return {
        "transaction_id": label.transaction_id,
        "verdict": verdict(label.is_fraud),
        "is_fraud": label.is_fraud,
        "source": label.source,
        "labelled_by": label.labelled_by,
        "known_at": label.known_at,
    }


# --- lists ------------------------------------------------------------------------------------


class ListEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    list: Literal["block", "allow"]
    entity_type: Literal["customer", "terminal"]
    entity_id: Identifier
    reason: str = Field(min_length=1, max_length=500)
    expires_at: AwareDatetime | None = Field(None, description="default: never")


class ListEntriesOut(BaseModel):
    entries: list[ListEntryOut]


@router.get(
    "/lists",
    tags=["lists"],
    summary="Block and allow list entries, newest first",
    response_model=ListEntriesOut,
    responses=errors(401, 422),
)
async def get_lists(
    runtime: RuntimeDep,
    principal: ReaderDep,
    list: Literal["block", "allow"] | None = None,
    entity_type: Literal["customer", "terminal"] | None = None,
    include_expired: bool = False,
) -> Any:
    now = datetime.now(UTC)
    entries = await reads.fetch_list_entries(
        runtime.pool,
        list_name=list,
        entity_type=entity_type,
        active_at=None if include_expired else now,
    )
    return {"entries": [list_entry_out(e, now) for e in entries]}


@router.post(
    "/lists",
    tags=["lists"],
    summary="Put a customer or terminal on the block or allow list",
    status_code=201,
    response_model=ListEntryOut,
    responses=errors(401, 403, 422),
)
async def create_list_entry(body: ListEntryIn, runtime: RuntimeDep, principal: AnalystDep) -> Any:
    """Replaces the entity's earlier entry; the policy applies it from the next decision on
    (a blocked entity is declined with rule `block_list`, an allowed one approved)."""
    entry = await operations.put_list_entry(
        runtime,
        list_name=body.list,
        entity_type=body.entity_type,
        entity_id=body.entity_id,
        reason=body.reason,
        created_by=principal.name,
        expires_at=body.expires_at,
    )
    return list_entry_out(entry)


@router.delete(
    "/lists/{entry_id}",
    tags=["lists"],
    summary="Remove a list entry",
    response_model=ListEntryOut,
    responses=errors(401, 403, 404, 422),
)
async def delete_list_entry(
    runtime: RuntimeDep,
    principal: AnalystDep,
    entry_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
) -> Any:
    """Returns the removed entry; the policy stops applying it at once."""
    return list_entry_out(await operations.delete_list_entry(runtime, entry_id=entry_id))


# --- models -----------------------------------------------------------------------------------


class ModelVersionOut(BaseModel):
    version: str
    aliases: list[str]
    serving: bool = Field(description="the version scoring right now")
    metrics: dict[str, float]
    threshold: float | None
    feature_names: list[str]
    created: datetime
    run_id: str | None
    source: str | None
    test_window: str | None
    description: str | None


class ModelsOut(BaseModel):
    serving_version: str | None
    model: dict[str, Any] = Field(description="the model's state (loading, training, ready)")
    versions: list[ModelVersionOut]


@router.get(
    "/models",
    tags=["models"],
    summary="Registered model versions with their metrics",
    response_model=ModelsOut,
    responses=errors(401),
)
async def get_models(runtime: RuntimeDep, principal: ReaderDep) -> Any:
    from fraudapp import model as serving

    engine = runtime.engine
    versions = await asyncio.to_thread(serving.list_versions, engine.tracking_uri)
    pipeline = engine.pipeline
    current = pipeline.scorer.model.version if pipeline is not None else None
    return {
        "serving_version": current,
        "model": engine.model_report(),
        "versions": [{**v, "serving": v["version"] == current} for v in versions],
    }


class PromotedOut(BaseModel):
    version: str
    threshold: float
    threshold_score: int
    feature_names: list[str]
    metrics: dict[str, float]
    run_id: str | None


@router.post(
    "/models/{version}/promote",
    tags=["models"],
    summary="Serve a version now and make it the champion",
    response_model=PromotedOut,
    responses=errors(401, 403, 404, 409, 422, 503),
)
async def promote_model(
    runtime: RuntimeDep,
    principal: AdminDep,
    version: Annotated[str, Path(pattern=r"^[0-9]{1,9}$", description="a registered version")],
) -> Any:
    """Loads the version off the event loop, swaps it into the scorer (no restart; the next
    micro-batch uses it) and moves the registry's `champion` alias to it."""
    return await operations.promote_version(runtime, version=version)


class TrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int | None = Field(
        None, ge=4, le=365, description="days of stored history (default: FIRST_MODEL_DAYS)"
    )
    train_days: float | None = Field(None, gt=0, le=365, description="default: the rest")
    delay_days: float | None = Field(
        None, ge=0, le=60, description="label delay gap (default: LABEL_DELAY_DAYS)"
    )
    test_days: float | None = Field(None, gt=0, le=60, description="default: 3")
    search: bool = Field(False, description="hyper-parameter search (slower)")


class TrainingJobOut(BaseModel):
    job_id: int
    state: Literal["queued", "loading", "training", "done", "failed", "cancelled"]
    running: bool
    stage: str | None
    progress: float
    version: str | None = Field(description="the version registered (as challenger)")
    error: str | None
    metrics: dict[str, float]
    rows: int | None = Field(description="transactions read")
    params: dict[str, Any]
    requested_by: str | None
    started_at: datetime
    finished_at: datetime | None


class TrainingStatusOut(BaseModel):
    job: TrainingJobOut | None = Field(description="the running or latest job")


@router.post(
    "/models/train",
    tags=["models"],
    summary="Retrain on stored labelled data in the background",
    status_code=202,
    response_model=TrainingJobOut,
    responses=errors(401, 403, 409, 422),
)
async def train_model(runtime: RuntimeDep, principal: AdminDep, body: TrainIn | None = None) -> Any:
    """One job at a time (409 while one runs). The new version is registered with the alias
    `challenger`; promote it to serve it. Follow it at `GET /models/train/{job_id}`."""
    body = body or TrainIn()
    job = await operations.start_training(
        runtime,
        requested_by=principal.name,
        days=body.days,
        train_days=body.train_days,
        delay_days=body.delay_days,
        test_days=body.test_days,
        search=body.search,
    )
    return job.report()


@router.get(
    "/models/train",
    tags=["models"],
    summary="The running or latest training job",
    response_model=TrainingStatusOut,
    responses=errors(401),
)
async def get_training(runtime: RuntimeDep, principal: ReaderDep) -> Any:
    job = operations.training_status(runtime)
    return {"job": job.report() if job is not None else None}


@router.get(
    "/models/train/{job_id}",
    tags=["models"],
    summary="A training job's progress and result",
    response_model=TrainingJobOut,
    responses=errors(401, 404, 422),
)
async def get_training_job(
    runtime: RuntimeDep, principal: ReaderDep, job_id: Annotated[int, Path(ge=1, le=2**31)]
) -> Any:
    job = operations.training_status(runtime, job_id=job_id)
    assert job is not None
    return job.report()


# --- simulator --------------------------------------------------------------------------------


class SimulatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["pause", "resume"] | None = Field(
        None, description="resume also starts a simulator the app started without"
    )
    rate_tps: float | None = Field(None, gt=0, le=100_000, description="transactions per second")


class SimulatorOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: bool
    running: bool
    paused: bool | None = None
    rate_tps: float | None = None
    sim_time: datetime | None = None
    emitted_transactions: int | None = None
    error: str | None = None


@router.get(
    "/simulator",
    tags=["simulator"],
    summary="The live simulator's state",
    response_model=SimulatorOut,
    responses=errors(401, 403),
)
async def get_simulator(runtime: RuntimeDep, principal: AdminDep) -> Any:
    return runtime.engine.simulator_status()


@router.post(
    "/simulator",
    tags=["simulator"],
    summary="Pause, resume or change the rate of the live simulator",
    response_model=SimulatorOut,
    responses=errors(401, 403, 409, 422, 503),
)
async def control_simulator(body: SimulatorIn, runtime: RuntimeDep, principal: AdminDep) -> Any:
    paused = None if body.action is None else body.action == "pause"
    return await operations.control_simulator(runtime, paused=paused, rate_tps=body.rate_tps)


# --- metrics (mounted at the root, not under /api/v1) -----------------------------------------

metrics_router = APIRouter(tags=["health"])


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **errors(401)},
)
async def metrics(runtime: RuntimeDep, principal: ReaderDep) -> Response:
    body = generate_latest(runtime.engine.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
