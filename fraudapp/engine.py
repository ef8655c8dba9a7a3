"""The scoring engine's lifecycle: serving model, feature state, pipeline and live simulator.

Started by the lifespan as one supervised boot task, so the app answers `/readyz` while it
works: load the registry's champion (or, on a brand-new install, train a first model on
simulated history in a thread, reporting progress), rebuild the feature state from the stored
history, start the pipeline, then the simulator. Stopping runs the other way.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pandas as pd
import redis.asyncio as aioredis

from fraudapp import model as serving
from fraudapp import store
from fraudapp.errors import NotReady
from fraudapp.features import FeatureConfig, FeatureState
from fraudapp.generator import LiveSimulator, SimulationConfig
from fraudapp.metrics import PipelineMetrics
from fraudapp.ml.tracking import tracking_uri
from fraudapp.pipeline import Feed, Pipeline
from fraudapp.policy import Policy
from fraudapp.scoring import Scorer
from fraudapp.settings import Settings
from fraudapp.transactions import TransactionBatch

log = logging.getLogger(__name__)


@dataclass
class ModelStatus:
    state: str = "not started"  # not started → loading → training → ready | failed
    stage: str | None = None
    progress: float = 0.0
    version: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)

    def report(self) -> dict[str, Any]:
        return {
            "ready": self.state == "ready",
            "state": self.state,
            "stage": self.stage,
            "progress": round(self.progress, 3),
            "version": self.version,
            "error": self.error,
        }


class Engine:
    """Owns everything that scores: model, feature state, policy, pipeline, simulator."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.tracking_uri = tracking_uri(settings.data_dir, settings.mlflow_tracking_uri)
        self.model_status = ModelStatus()
        self.policy = Policy(
            review_score=settings.review_score, decline_score=settings.decline_score
        )
        self.metrics = PipelineMetrics()
        self.feed = Feed()
        self.pipeline: Pipeline | None = None
        self.simulator: LiveSimulator | None = None
        self.rebuild_seconds: float | None = None
        self.rebuilt_transactions = 0
        self._boot: asyncio.Task[None] | None = None
        self._simulator_task: asyncio.Task[None] | None = None
        self.boot_error: str | None = None

    # --- start / stop ------------------------------------------------------------------------
    def start(self) -> None:
        self._boot = asyncio.create_task(self._start(), name="engine.boot")
        self._boot.add_done_callback(self._boot_done)

    def _boot_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.boot_error = f"{type(exc).__name__}: {exc}"
            log.error("engine.boot_failed error=%s", self.boot_error, exc_info=exc)

    async def _start(self) -> None:
        model = await self._load_or_train_model()
        self.policy.load(await store.fetch_list_entries(self.pool))
        state = await self._rebuild_state()
        # Everything alive now (modules, the model, the state's id maps) lives as long as the
        # app: keep the cyclic collector off it, or each full collection walks it all and
        # stalls the event loop for tens of milliseconds mid-stream.
        gc.collect()
        gc.freeze()
        scorer = Scorer(state, model, self.policy, reasons_top=self.settings.reasons_top)
        self.pipeline = Pipeline(
            settings=self.settings,
            pool=self.pool,
            redis=self.redis,
            scorer=scorer,
            metrics=self.metrics,
            feed=self.feed,
        )
        self.pipeline.start()
        if self.settings.simulator_enabled:
            await self.start_simulator()

    async def stop(self) -> None:
        """Producers first, then drain the pipeline; nothing queued is lost."""
        if self._boot is not None and not self._boot.done():
            self._boot.cancel()
            await asyncio.gather(self._boot, return_exceptions=True)
        await self.stop_simulator()
        if self.pipeline is not None:
            await self.pipeline.stop()

    # --- model -------------------------------------------------------------------------------
    async def _load_or_train_model(self) -> serving.ServingModel:
        status = self.model_status
        status.state, status.stage = "loading", "champion"
        model = await asyncio.to_thread(serving.load_champion, self.tracking_uri)
        if model is None:
            status.state = "training"
            log.info("engine.first_model_training tracking_uri=%s", self.tracking_uri)

            def progress(stage: str, fraction: float) -> None:
                status.stage, status.progress = stage, fraction

            model = await asyncio.to_thread(
                functools.partial(
                    serving.train_first_model,
                    tracking_uri=self.tracking_uri,
                    days=self.settings.first_model_days,
                    customers=self.settings.first_model_customers,
                    seed=self.settings.simulator_seed,
                    delay_days=self.settings.label_delay_days,
                    progress=progress,
                )
            )
        status.state, status.stage, status.progress = "ready", None, 1.0
        status.version = model.version
        log.info("engine.model_ready version=%s", model.version)
        return model

    def promote(self, model: serving.ServingModel) -> None:
        """Serve `model` from the next micro-batch on."""
        if self.pipeline is None:
            raise NotReady("the pipeline is not running yet")
        self.pipeline.swap_model(model)
        self.model_status.version = model.version
        log.info("engine.model_swapped version=%s", model.version)

    # --- feature state -----------------------------------------------------------------------
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(label_delay_days=self.settings.label_delay_days)

    async def _rebuild_state(self) -> FeatureState:
        state, count, seconds = await rebuild_state(self.pool, config=self.feature_config())
        self.rebuild_seconds = seconds
        self.rebuilt_transactions = count
        log.info("engine.state_rebuilt transactions=%d seconds=%.2f", count, seconds)
        return state

    # --- simulator ---------------------------------------------------------------------------
    async def start_simulator(self) -> None:
        if self.pipeline is None:
            raise NotReady("the pipeline is not running yet")
        if self._simulator_task is not None and not self._simulator_task.done():
            return
        settings = self.settings
        newest = await store.newest_transaction_at(self.pool)
        now = datetime.now(UTC)
        start = max(now, newest) if newest is not None else now
        config = SimulationConfig(
            seed=settings.simulator_seed,
            n_customers=settings.simulator_customers,
            n_terminals=settings.simulator_terminals,
            fraud_rate=settings.simulator_fraud_rate,
        )
        simulator = await asyncio.to_thread(
            LiveSimulator,
            config,
            start=start,
            run_prefix=f"L{now:%Y%m%dT%H%M%S}-",
            rate=max(settings.simulator_rate_tps, 0.001),
        )
        if settings.simulator_rate_tps == 0:
            simulator.pause()
        self.simulator = simulator
        self._simulator_task = asyncio.create_task(
            simulator.run(_PipelineQueue(self.pipeline), self._on_labels, self._on_truth),
            name="simulator",
        )

    async def stop_simulator(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()
        if self._simulator_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._simulator_task), 5)
            except TimeoutError:
                self._simulator_task.cancel()
            await asyncio.gather(self._simulator_task, return_exceptions=True)

    async def _on_labels(self, labels: pd.DataFrame) -> None:
        assert self.pipeline is not None
        await self.pipeline.submit_labels(labels)

    async def _on_truth(self, truth: pd.DataFrame) -> None:
        await store.insert_truth(self.pool, truth=truth)

    def simulator_status(self) -> dict[str, Any]:
        sim = self.simulator
        task = self._simulator_task
        if sim is None or task is None:
            return {"running": False, "enabled": self.settings.simulator_enabled}
        crashed = task.done() and not task.cancelled() and task.exception() is not None
        return {
            "enabled": self.settings.simulator_enabled,
            "running": not task.done(),
            "paused": sim.paused,
            "rate_tps": round(sim.rate, 3),
            "acceleration": round(sim.acceleration, 2),
            "sim_time": sim.sim_time.isoformat(),
            "emitted_transactions": sim.emitted_transactions,
            "emitted_labels": sim.emitted_labels,
            "error": repr(task.exception()) if crashed else None,
        }

    # --- status ------------------------------------------------------------------------------
    def model_report(self) -> dict[str, Any]:
        report = self.model_status.report()
        if self.boot_error:
            report.update(ready=False, state="failed", error=self.boot_error)
        return report

    def pipeline_report(self) -> dict[str, Any]:
        if self.pipeline is None:
            state = "failed" if self.boot_error else "starting"
            return {"ready": False, "state": state, "error": self.boot_error}
        report = self.pipeline.status()
        report["simulator"] = self.simulator_status()
        report["state_rebuild"] = {
            "transactions": self.rebuilt_transactions,
            "seconds": round(self.rebuild_seconds or 0.0, 3),
        }
        sim = report["simulator"]
        if sim.get("error"):
            report["ready"] = False
        return report


async def rebuild_state(
    pool: asyncpg.Pool, *, config: FeatureConfig
) -> tuple[FeatureState, int, float]:
    """Replay the stored recent history into fresh state (exact for windows ≤ the horizon).

    Returns the state, the transactions replayed and the seconds taken. A function of the pool
    alone, so that `fraudapp bench rebuild` times this very code without an engine.
    """
    started = time.perf_counter()
    state = FeatureState(config)
    newest = await store.newest_transaction_at(pool)
    count = 0
    if newest is not None:
        since = newest - timedelta(days=config.history_days)
        # Labels wait in the state until the replay reaches their known_at.
        state.add_labels(await store.fetch_known_labels(pool, since=since))
        async with pool.acquire() as conn:
            async for frame in store.iter_history(conn, since=since):
                await asyncio.to_thread(state.update, TransactionBatch.from_frame(frame))
                count += len(frame)
    return state, count, time.perf_counter() - started


class _PipelineQueue:
    """The queue face the simulator puts chunks on: the pipeline's bounded queue."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def full(self) -> bool:
        return self._pipeline.queue.full()

    def put_nowait(self, batch: Any) -> None:
        self._pipeline.submit_nowait(batch)

    async def put(self, batch: Any) -> None:
        await self._pipeline.submit(batch)
