"""Offline training: labelled history → time-ordered protocol → XGBoost → MLflow registry.

`dataset` loads history (simulator, file, PostgreSQL), `protocol` splits it in time, `training`
fits and `metrics` / `evaluation` measure, `tracking` logs runs and registers models; the app
serves the registry's champion through `fraudapp.model`. `add_cli` adds `train` and `evaluate`.
"""

from fraudapp.ml.cli import add_cli

__all__ = ["add_cli"]
