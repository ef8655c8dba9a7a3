"""Where training runs and registered models live: the MLflow tracking store and its registry.

Training (`fraudapp.ml.training`) logs runs and registers versions here; serving
(`fraudapp.model`) reads the `champion` alias from the same registry. By default the store is a
SQLite database under the data dir with artifacts in a folder beside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fraudapp.ml.training import FeatureTable, FittedSplit, TrainConfig

MODEL_NAME = "fraudapp"
EXPERIMENT_NAME = "fraudapp"
CHAMPION = "champion"
CHALLENGER = "challenger"
ARTIFACTS_DIRNAME = "mlartifacts"

# Warnings MLflow 3.17 raises from its own code on every use with SQLAlchemy 2.1 and pandas 3;
# nothing we call can avoid them, and under `-W error` they would turn into failures.
_KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"The ``noload`` loader strategy is deprecated", DeprecationWarning),
    (r"Operation with range is deprecated", DeprecationWarning),
    # Printed in colour (ANSI escapes first) while mlflow.pyfunc imports its agent schemas.
    (r".*Any type hint is inferred as AnyType", UserWarning),
)


def tracking_uri(data_dir: Path, mlflow_tracking_uri: str | None) -> str:
    """The tracking URI: the configured one, else `sqlite:///<data_dir>/mlflow.db`."""
    if mlflow_tracking_uri:
        return mlflow_tracking_uri
    return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts, or None to let a tracking server decide.

    Run client-side against a database, MLflow would otherwise put artifacts in `./mlruns` of
    whatever directory the process started in; for a SQLite store they go beside the database
    file, for another database under `./mlartifacts`.
    """
    if urlsplit(uri).scheme in ("http", "https", "databricks"):
        return None
    database = _sqlite_path(uri)
    if database is not None:
        return (database.parent / ARTIFACTS_DIRNAME).resolve().as_uri()
    return (Path.cwd() / ARTIFACTS_DIRNAME).resolve().as_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other stores and in-memory)."""
    parts = urlsplit(uri)
    if parts.scheme != "sqlite":
        return None
    path = unquote(parts.path)
    if path in ("", "/", "/:memory:"):
        return None
    return Path(path)


def silence_known_warnings() -> None:
    """Ignore the deprecation warnings MLflow emits from its own internals (see above)."""
    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def client(uri: str) -> MlflowClient:
    """An MLflow client bound to `uri` (tracking and registry alike)."""
    silence_known_warnings()
    database = _sqlite_path(uri)
    if database is not None:
        # A brand-new data dir: SQLite creates the file but not the folders above it.
        database.parent.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(mlflow_client: MlflowClient, uri: str) -> str:
    """The id of the `fraudapp` experiment, created with its artifact location if missing."""
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = artifact_location(uri)
    if location is not None and location.startswith("file:"):
        Path(unquote(urlsplit(location).path)).mkdir(parents=True, exist_ok=True)
    return str(mlflow_client.create_experiment(EXPERIMENT_NAME, artifact_location=location))


@dataclass(frozen=True)
class Registered:
    version: str
    run_id: str


def log_and_register(
    fitted: FittedSplit,
    *,
    table: FeatureTable,
    config: TrainConfig,
    uri: str,
    seconds: Mapping[str, float],
    run_name: str | None = None,
) -> Registered:
    """Log one training run (parameters, metrics, features, plots, model) and register it.

    The new version gets the alias `challenger`, and `champion` too when there is none yet.
    Test metrics, threshold and feature names are also set as version tags, so the app can
    list versions without opening runs.
    """
    import mlflow
    import mlflow.xgboost
    import pandas as pd
    from mlflow.models import infer_signature

    from fraudapp.ml import plots

    mlflow_client = client(uri)
    experiment_id = ensure_experiment(mlflow_client, uri)
    # `log_model` only speaks the fluent API, which reads the process-wide tracking URI.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    history = table.history
    test = fitted.test_metrics
    k = config.top_k
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        params: dict[str, Any] = {
            **{f"xgb.{name}": value for name, value in fitted.params.items()},
            "xgb.rounds": fitted.rounds,
            "xgboost_version": _xgboost_version(),
            "source": history.source,
            "train_days": config.train_days,
            "delay_days": config.delay_days,
            "test_days": config.test_days,
            "search": config.search,
            "target_precision": config.target_precision,
            "n_features": len(fitted.feature_names),
            "feature_label_delay_days": table.label_delay_days,
            "features_left_out": ",".join(table.left_out) or "-",
            **fitted.split.as_params(),
            **fitted.valid_split.as_params("valid."),
            **{f"rows.{name}": n for name, n in fitted.rows.items()},
        }
        mlflow.log_params(params)
        run_metrics = {
            **{name: value for name, value in test.items()},
            **{f"valid.{name}": value for name, value in fitted.valid_metrics.items()},
            **{f"base_score.{name}": value for name, value in fitted.base_score.items()},
            **{f"seconds.{name}": value for name, value in seconds.items()},
        }
        mlflow.log_metrics({name: float(value) for name, value in run_metrics.items()})
        mlflow.set_tags(
            {
                "threshold": repr(fitted.threshold),
                "feature_names": ",".join(fitted.feature_names),
            }
        )
        mlflow.log_dict(
            {"feature_names": list(fitted.feature_names), "left_out": list(table.left_out)},
            "features.json",
        )
        mlflow.log_dict(
            {
                "candidates": [
                    {"params": c.params, "rounds": c.rounds, "valid": c.valid, "seconds": c.seconds}
                    for c in fitted.candidates
                ],
                "base_score": fitted.base_score,
            },
            "search.json",
        )
        y, score = fitted.test_y, fitted.test_score
        figures = {
            "plots/roc.png": plots.roc_figure(y, score, auc=test["auc_roc"]),
            "plots/precision_recall.png": plots.pr_figure(
                y, score, ap=test["average_precision"], threshold=fitted.threshold
            ),
            "plots/feature_importance.png": plots.importance_figure(
                fitted.booster, fitted.feature_names
            ),
            "plots/score_by_class.png": plots.score_distribution_figure(
                y, score, threshold=fitted.threshold
            ),
        }
        for path, figure in figures.items():
            mlflow.log_figure(figure, path)
        example = pd.DataFrame(fitted.test_example, columns=list(fitted.feature_names))
        signature = infer_signature(example, fitted.booster.inplace_predict(fitted.test_example))
        info = mlflow.xgboost.log_model(
            fitted.booster, name="model", signature=signature, input_example=example
        )
    tags = {
        "threshold": repr(fitted.threshold),
        "feature_names": ",".join(fitted.feature_names),
        "source": history.source,
        "feature_label_delay_days": str(table.label_delay_days),
        "test_window": f"{fitted.split.test_start.isoformat()}/{fitted.split.test_end.isoformat()}",
        **{
            f"metric.{name}": repr(float(test[name]))
            for name in version_metric_names(k)
            if name in test
        },
    }
    ensure_registered_model(mlflow_client)
    version = mlflow_client.create_model_version(
        MODEL_NAME,
        source=info.model_uri,
        run_id=run.info.run_id,
        tags=tags,
        model_id=info.model_id,
        description=f"XGBoost, {fitted.split.describe()}",
    )
    mlflow_client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version.version)
    if champion_version(mlflow_client) is None:
        mlflow_client.set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    return Registered(str(version.version), run.info.run_id)


def version_metric_names(k: int) -> tuple[str, ...]:
    return (
        "auc_roc",
        "average_precision",
        f"card_precision_at_{k}",
        "precision",
        "recall",
        "f1",
        "tp",
        "fp",
        "tn",
        "fn",
    )


def ensure_registered_model(mlflow_client: MlflowClient) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(MODEL_NAME)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        mlflow_client.create_registered_model(
            MODEL_NAME, description="fraudapp's transaction fraud model (XGBoost)."
        )


def champion_version(mlflow_client: MlflowClient) -> str | None:
    """The version holding the `champion` alias, or None."""
    return alias_version(mlflow_client, CHAMPION)


def alias_version(mlflow_client: MlflowClient, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _xgboost_version() -> str:
    import xgboost

    return str(xgboost.__version__)
