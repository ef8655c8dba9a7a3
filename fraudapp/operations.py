"""State-changing operations, shared by the JSON API and the dashboard.

Each takes the `Runtime`, checks what it is asked, writes PostgreSQL (the source of truth) and
then applies the change to the running engine — the policy's lists, the feature state, the
serving model, the simulator — so the very next decision sees it. Failures are `FraudAppError`s;
the API and the dashboard turn them into their own responses. Retraining runs on a thread, one
job at a time, and reports progress through `ModelJobs`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fraudapp import store
from fraudapp.errors import Conflict, FraudAppError, InvalidInput, NotFound, NotReady
from fraudapp.policy import ListEntry
from fraudapp.store import reads

if TYPE_CHECKING:
    from fraudapp.lifespan import Runtime
    from fraudapp.model import ServingModel
    from fraudapp.pipeline import Pipeline

log = logging.getLogger(__name__)

LISTS = ("block", "allow")
ENTITY_TYPES = ("customer", "terminal")
LABEL_SOURCES = ("analyst", "chargeback", "import")


def running_pipeline(runtime: Runtime) -> Pipeline:
    """The pipeline, or `NotReady` while the engine is still booting (or failed to)."""
    pipeline = runtime.engine.pipeline
    if pipeline is None or not pipeline.accepting:
        raise NotReady("the scoring pipeline is not running yet; retry shortly")
    return pipeline


# --- labels -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Label:
    """A stored verdict on one transaction."""

    transaction_id: str
    is_fraud: bool
    source: str
    labelled_by: str | None
    known_at: datetime


async def label_transaction(
    runtime: Runtime,
    *,
    transaction_id: str,
    is_fraud: bool,
    labelled_by: str | None,
    source: str = "analyst",
    known_at: datetime | None = None,
) -> Label:
    """Store a verdict and let it update the feature state (terminal risk); it becomes training
    data with the next retraining. `NotFound` when the transaction is not stored (yet)."""
    if source not in LABEL_SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(LABEL_SOURCES)}, not {source!r}")
    pipeline = running_pipeline(runtime)
    target = await reads.fetch_label_target(runtime.pool, transaction_id=transaction_id)
    if target is None:
        raise NotFound(f"transaction {transaction_id!r} is not stored (yet)")
    known = known_at or datetime.now(UTC)
    events = pd.DataFrame(
        {
            "transaction_id": [transaction_id],
            "timestamp": pd.to_datetime([target["occurred_at"]], utc=True),
            "customer_id": [target["customer_id"]],
            "terminal_id": [target["terminal_id"]],
            "is_fraud": np.array([is_fraud], dtype=bool),
            "known_at": pd.to_datetime([known], utc=True),
            "source": [source],
            "labelled_by": [labelled_by],
        }
    )
    stored = await pipeline.submit_labels(events)
    if stored.empty:  # deleted between the check and the insert
        raise NotFound(f"transaction {transaction_id!r} is not stored")
    log.info(
        "labels.recorded transaction_id=%s is_fraud=%s source=%s by=%s",
        transaction_id,
        is_fraud,
        source,
        labelled_by,
    )
    return Label(transaction_id, is_fraud, source, labelled_by, known)


# --- block and allow lists --------------------------------------------------------------------


async def put_list_entry(
    runtime: Runtime,
    *,
    list_name: str,
    entity_type: str,
    entity_id: str,
    reason: str,
    created_by: str,
    expires_at: datetime | None = None,
) -> ListEntry:
    """Put a customer or terminal on the block or allow list (replacing its earlier entry);
    the policy applies it from the next decision on."""
    if list_name not in LISTS:
        raise InvalidInput(f"list must be one of {', '.join(LISTS)}, not {list_name!r}")
    if entity_type not in ENTITY_TYPES:
        raise InvalidInput(
            f"entity_type must be one of {', '.join(ENTITY_TYPES)}, not {entity_type!r}"
        )
    if not entity_id:
        raise InvalidInput("entity_id must not be empty")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidInput("expires_at needs a time zone (e.g. 2030-01-01T00:00:00Z)")
        if expires_at <= datetime.now(UTC):
            raise InvalidInput("expires_at must be in the future")
    entry = await store.upsert_list_entry(
        runtime.pool,
        list_name=list_name,
        entity_type=entity_type,
        entity_id=entity_id,
        reason=reason,
        created_by=created_by,
        expires_at=expires_at,
    )
    runtime.engine.policy.put(entry)
    log.info(
        "lists.put list=%s entity_type=%s entity_id=%s by=%s expires_at=%s",
        list_name,
        entity_type,
        entity_id,
        created_by,
        expires_at,
    )
    return entry


async def delete_list_entry(runtime: Runtime, *, entry_id: int) -> ListEntry:
    """Remove an entry; the policy stops applying it at once. `NotFound` when there is none."""
    entry = await store.delete_list_entry(runtime.pool, entry_id=entry_id)
    if entry is None:
        raise NotFound(f"list entry {entry_id} does not exist")
    runtime.engine.policy.remove(entry.entity_type, entry.entity_id)
    log.info(
        "lists.removed entry_id=%d entity_type=%s entity_id=%s",
        entry_id,
        entry.entity_type,
        entry.entity_id,
    )
    return entry


# --- models -----------------------------------------------------------------------------------


async def promote_version(runtime: Runtime, *, version: str) -> dict[str, Any]:
    """Serve `version` from the next micro-batch on and make it the registry's champion.

    Loads the version off the loop first, so a version that cannot be loaded (`NotFound`, or a
    feature this build does not compute) changes nothing; then swaps it in, then moves the
    alias, so a restart serves the same model.
    """
    from fraudapp import model as serving

    engine = runtime.engine
    running_pipeline(runtime)
    async with runtime.models.promoting:
        loaded = await asyncio.to_thread(serving.load_version, engine.tracking_uri, version)
        try:
            engine.promote(loaded)
        except ValueError as exc:  # the scorer refuses a model needing features we lack
            raise Conflict(str(exc)) from exc
        await asyncio.to_thread(serving.promote, engine.tracking_uri, loaded.version)
    log.info("models.promoted version=%s", loaded.version)
    return loaded.describe()


@dataclass
class TrainingJob:
    """One retraining on stored labelled data; `report()` is what the API shows."""

    job_id: int
    requested_by: str | None
    params: dict[str, Any]
    state: str = "queued"  # queued → loading → training → done | failed | cancelled
    stage: str | None = None
    progress: float = 0.0
    version: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    rows: int | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state in ("queued", "loading", "training")

    def report(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "running": self.running,
            "stage": self.stage,
            "progress": round(self.progress, 3),
            "version": self.version,
            "error": self.error,
            "metrics": dict(self.metrics),
            "rows": self.rows,
            "params": dict(self.params),
            "requested_by": self.requested_by,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class TrainingCancelled(Exception):
    """Raised from the progress callback to stop a training thread at its next stage."""


class ModelJobs:
    """Changes to the model: one retraining at a time (its data read on the loop, its fit on a
    worker thread), one promotion at a time (so the serving model and the alias agree)."""

    def __init__(self) -> None:
        self.promoting = asyncio.Lock()
        self.jobs: dict[int, TrainingJob] = {}
        self._loaded: dict[str, ServingModel] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._cancel = threading.Event()

    @property
    def current(self) -> TrainingJob | None:
        """The running job, else the latest one."""
        return self.jobs[max(self.jobs)] if self.jobs else None

    async def load(self, runtime: Runtime, version: str) -> ServingModel:
        """A registered version, the serving one as it is, others loaded once (off the loop)."""
        from fraudapp import model as serving

        pipeline = runtime.engine.pipeline
        if pipeline is not None and pipeline.scorer.model.version == version:
            return pipeline.scorer.model
        cached = self._loaded.get(version)
        if cached is None:
            cached = await asyncio.to_thread(
                serving.load_version, runtime.engine.tracking_uri, version
            )
            while len(self._loaded) >= 4:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[version] = cached
        return cached

    def get(self, job_id: int) -> TrainingJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"training job {job_id} does not exist")
        return job

    def start(self, runtime: Runtime, job: TrainingJob) -> None:
        self.jobs[job.job_id] = job
        self._cancel.clear()
        self._task = asyncio.create_task(self._run(runtime, job), name=f"training-{job.job_id}")

    def new_id(self) -> int:
        return next(self._ids)

    async def stop(self, timeout_seconds: float = 10.0) -> None:
        """Ask a running job to stop at its next stage and wait for it (shutdown)."""
        task = self._task
        if task is None or task.done():
            return
        self._cancel.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_seconds)
        except TimeoutError:
            log.warning("training.stop_timeout seconds=%.0f", timeout_seconds)

    async def _run(self, runtime: Runtime, job: TrainingJob) -> None:
        from fraudapp.ml import dataset, training
        from fraudapp.ml.protocol import latest_split

        params = job.params
        try:
            job.state, job.stage = "loading", "history"
            newest = await store.newest_transaction_at(runtime.pool)
            if newest is None:
                raise InvalidInput("no stored transactions to train on")
            cutoff = newest + timedelta(microseconds=1)
            since = cutoff - timedelta(days=params["days"])
            history = await dataset.load_postgres(runtime.pool, since=since, cutoff=cutoff)
            job.rows = len(history.transactions)
            split = latest_split(
                pd.Timestamp(cutoff),
                train_days=params["train_days"],
                delay_days=params["delay_days"],
                test_days=params["test_days"],
            )
            config = training.TrainConfig(
                train_days=params["train_days"],
                delay_days=params["delay_days"],
                test_days=params["test_days"],
                search=params["search"],
                compare_base_score=params["search"],
            )
            job.state = "training"

            def progress(stage: str, fraction: float) -> None:
                if self._cancel.is_set():
                    raise TrainingCancelled("the app is shutting down")
                job.stage, job.progress = stage, fraction

            trained = await asyncio.to_thread(
                functools.partial(
                    training.train,
                    history,
                    split,
                    config,
                    tracking_uri=runtime.engine.tracking_uri,
                    progress=progress,
                    run_name=f"api-job-{job.job_id}",
                )
            )
        except TrainingCancelled as exc:
            job.state, job.error = "cancelled", str(exc)
        except (FraudAppError, ValueError) as exc:  # bad windows, too little data: say which
            job.state, job.error = "failed", str(getattr(exc, "detail", exc))
            log.warning("training.failed job_id=%d error=%s", job.job_id, job.error)
        except Exception as exc:
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("training.crashed job_id=%d", job.job_id)
        else:
            job.state, job.stage, job.progress = "done", None, 1.0
            job.version = trained.version
            job.metrics = {
                k: float(v) for k, v in trained.fitted.test_metrics.items() if np.isfinite(v)
            }
            log.info("training.done job_id=%d version=%s", job.job_id, trained.version)
        finally:
            job.finished_at = datetime.now(UTC)


def training_defaults(runtime: Runtime) -> dict[str, Any]:
    settings = runtime.settings
    return {
        "days": settings.first_model_days,
        "delay_days": settings.label_delay_days,
        "test_days": 3,
        "search": False,
    }


async def start_training(
    runtime: Runtime,
    *,
    requested_by: str | None,
    days: int | None = None,
    train_days: float | None = None,
    delay_days: float | None = None,
    test_days: float | None = None,
    search: bool = False,
) -> TrainingJob:
    """Retrain on the stored labelled history of the last `days` (up to the newest stored
    transaction) in the background; the new version is registered as `challenger`.

    Windows default to the first model's: train = days − delay − test. `Conflict` while a job
    runs; `InvalidInput` when the windows leave fewer than 3 training days.
    """
    trainer = runtime.models
    current = trainer.current
    if current is not None and current.running:
        raise Conflict(f"training job {current.job_id} is still running ({current.state})")
    defaults = training_defaults(runtime)
    days = days if days is not None else int(defaults["days"])
    delay = float(delay_days if delay_days is not None else defaults["delay_days"])
    test = float(test_days if test_days is not None else defaults["test_days"])
    train = float(train_days if train_days is not None else days - delay - test)
    if train < 3:
        raise InvalidInput(
            f"{days} days of history leave {train:g} training days after a {delay:g}-day label "
            f"delay and {test:g} test days; need at least 3"
        )
    if train + delay + test > days:
        raise InvalidInput(
            f"train_days + delay_days + test_days ({train + delay + test:g}) exceed days ({days})"
        )
    params = {
        "days": days,
        "train_days": train,
        "delay_days": delay,
        "test_days": test,
        "search": search,
    }
    job = TrainingJob(job_id=trainer.new_id(), requested_by=requested_by, params=params)
    trainer.start(runtime, job)
    log.info("training.started job_id=%d params=%s by=%s", job.job_id, params, requested_by)
    return job


def training_status(runtime: Runtime, *, job_id: int | None = None) -> TrainingJob | None:
    """A job by id (`NotFound` if unknown), or the running / latest one (None before any)."""
    trainer = runtime.models
    return trainer.get(job_id) if job_id is not None else trainer.current


# --- simulator --------------------------------------------------------------------------------


async def control_simulator(
    runtime: Runtime, *, paused: bool | None = None, rate_tps: float | None = None
) -> dict[str, Any]:
    """Pause or resume the live simulator and/or change its rate; resuming starts it when the
    app started with it off. Returns the simulator's status."""
    engine = runtime.engine
    running_pipeline(runtime)
    if rate_tps is not None and not rate_tps > 0:
        raise InvalidInput("rate_tps must be greater than 0 (pause it instead)")
    if engine.simulator is None and paused is False:
        await engine.start_simulator()
    simulator = engine.simulator
    if simulator is None:
        if paused is None and rate_tps is None:
            return engine.simulator_status()
        raise Conflict("the simulator is not running; resume it to start it")
    if rate_tps is not None:
        simulator.rate = rate_tps
    if paused is True and not simulator.paused:
        simulator.pause()
    elif paused is False and simulator.paused:
        simulator.resume()
    log.info(
        "simulator.controlled paused=%s rate_tps=%.1f at=%.0f",
        simulator.paused,
        simulator.rate,
        time.time(),
    )
    return engine.simulator_status()
