"""Every setting of fraudapp, read once from the environment (prefix `FRAUDAPP_`).

Only this module reads the environment. Each field is documented in the README's settings table
(a test keeps the two in step); units are in the names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Scope = Literal["score", "analyst", "admin"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAUDAPP_", extra="ignore", frozen=True)

    # Where things live
    data_dir: Path = Field(
        Path(".fraudapp"),
        description="Directory for the embedded PostgreSQL and Redis, MLflow runs and API keys.",
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user@host:port/db). Unset: start an embedded "
        "PostgreSQL under the data dir.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:port/db). Unset: start an embedded Redis under the "
        "data dir.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Unset: sqlite:///<data dir>/mlflow.db with artifacts "
        "under <data dir>/mlartifacts.",
    )
    log_level: str = Field("INFO", description="Logging level (DEBUG, INFO, WARNING, ERROR).")
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="How long to wait for PostgreSQL or Redis at startup."
    )

    # Simulator (live traffic)
    simulator_enabled: bool = Field(True, description="Start the live transaction simulator.")
    simulator_rate_tps: float = Field(
        50.0, ge=0, description="Live simulator rate in transactions per second (changeable live)."
    )
    simulator_customers: int = Field(20_000, gt=0, description="Customers in the simulated world.")
    simulator_terminals: int = Field(5_000, gt=0, description="Terminals in the simulated world.")
    simulator_seed: int = Field(7, description="Seed of the simulated world.")
    simulator_fraud_rate: float = Field(
        0.007, ge=0, lt=0.5, description="Share of simulated transactions that are fraudulent."
    )

    # Scoring pipeline
    queue_max_chunks: int = Field(
        512,
        gt=0,
        description="Bound of the ingest queue, in chunks (a simulator tick or one API request).",
    )
    batch_max_size: int = Field(
        2048, gt=0, description="Most transactions the worker scores in one micro-batch."
    )
    batch_max_wait_ms: float = Field(
        25.0, ge=0, description="Longest the worker waits to fill a micro-batch, in milliseconds."
    )
    writes_in_flight: int = Field(
        2, ge=1, le=8, description="Micro-batches being written to PostgreSQL at the same time."
    )
    writer_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest backoff between retries while PostgreSQL is unreachable."
    )
    shutdown_drain_seconds: float = Field(
        30.0,
        gt=0,
        description="How long shutdown waits for the queue to drain and writes to commit.",
    )
    label_delay_days: int = Field(
        7, ge=0, description="Label delay assumed by terminal-risk features and training, in days."
    )

    # Policy
    review_score: int = Field(
        70, ge=0, le=99, description="Risk score (0–99) from which a transaction goes to review."
    )
    decline_score: int = Field(
        90, ge=0, le=99, description="Risk score (0–99) from which a transaction is declined."
    )
    reasons_top: int = Field(3, ge=1, le=10, description="Reason codes attached to a decision.")

    # Cache
    cache_ttl_seconds: int = Field(
        86_400, gt=0, description="How long a high-risk customer stays in the Redis cache."
    )
    cache_key_prefix: str = Field("fraudapp:v1:", description="Prefix of every Redis key.")

    # Model
    first_model_days: int = Field(
        21, gt=0, description="Days of simulated history the first model is trained on."
    )
    first_model_customers: int = Field(
        5_000, gt=0, description="Customers in the simulated history of the first model."
    )

    # API and dashboard
    api_keys: dict[str, list[Scope]] = Field(
        default_factory=dict,
        description='API keys and their scopes as JSON, e.g. {"k1": ["score"], "k2": '
        '["analyst", "admin"]}. Empty: a key with every scope is created under the data dir.',
    )
    read_requires_key: bool = Field(
        False, description="Require an API key (any scope) to read the API and the dashboard."
    )
    ingest_max_transactions: int = Field(
        1_000, gt=0, description="Most transactions accepted by one POST /api/v1/transactions."
    )
    session_secret: str | None = Field(
        None,
        description="Secret signing dashboard session cookies. Unset: generated under the data "
        "dir.",
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        if self.review_score > self.decline_score:
            raise ValueError(
                f"FRAUDAPP_REVIEW_SCORE ({self.review_score}) must not exceed "
                f"FRAUDAPP_DECLINE_SCORE ({self.decline_score})"
            )
        return self

    def env_name(self, field: str) -> str:
        return f"FRAUDAPP_{field.upper()}"
