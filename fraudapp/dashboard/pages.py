"""The dashboard's pages and the analyst's actions on them.

`/` overview, `/review` the review queue, `/transactions/{id}` one decision explained with exact
SHAP, `/customers/{id}` a customer's history and lists, `/models` the registered versions. Reads
go through `store.reads` (shared with the API) and `store.charts`; every action goes through
`operations`, the same code the JSON API calls, with the scope the API would ask for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fraudapp import model as serving
from fraudapp import operations
from fraudapp.dashboard import figures
from fraudapp.dashboard.session import AdminDep, AnalystDep, reader
from fraudapp.dashboard.views import render
from fraudapp.deps import RuntimeDep
from fraudapp.errors import InvalidInput, NotFound
from fraudapp.features import FEATURES
from fraudapp.lifespan import Runtime
from fraudapp.store import charts, reads

log = logging.getLogger(__name__)

REVIEW_PAGE_ROWS = 50
REVIEW_CANDIDATES = 10_000
TIMELINE_ROWS = 50
MODELS_KEPT = 4
CURVE_POINTS = 200

router = APIRouter(include_in_schema=False, dependencies=[Depends(reader)])


# --- models behind the pages ------------------------------------------------------------------


async def model_version(request: Request, runtime: Runtime, version: str) -> serving.ServingModel:
    """The serving model if it is `version`, else that version loaded from the registry (the
    last few are kept, so paging through transactions does not reload them)."""
    pipeline = runtime.engine.pipeline
    if pipeline is not None and pipeline.scorer.model.version == version:
        return pipeline.scorer.model
    kept: OrderedDict[str, serving.ServingModel] | None = getattr(
        request.app.state, "dashboard_models", None
    )
    if kept is None:
        kept = request.app.state.dashboard_models = OrderedDict()
    if version in kept:
        kept.move_to_end(version)
        return kept[version]
    loaded = await asyncio.to_thread(serving.load_version, runtime.engine.tracking_uri, version)
    kept[version] = loaded
    while len(kept) > MODELS_KEPT:
        kept.popitem(last=False)
    return loaded


def serving_version(runtime: Runtime) -> str | None:
    pipeline = runtime.engine.pipeline
    if pipeline is not None:
        return pipeline.scorer.model.version
    return runtime.engine.model_status.version


def decode_features(raw: bytes | None, names: tuple[str, ...]) -> np.ndarray | None:
    """`decision.features` (float32 little-endian, the model's feature order) as an array."""
    if not raw:
        return None
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if len(values) != len(names):
        return None
    return values


def _thresholds(runtime: Runtime) -> dict[str, int]:
    settings = runtime.settings
    return {"review_score": settings.review_score, "decline_score": settings.decline_score}


# --- overview ---------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    from fraudapp.dashboard.live import CHART_WINDOW

    return render(
        request,
        "overview.html",
        {
            "simulator": runtime.engine.simulator_status(),
            "chart_minutes": int(CHART_WINDOW.total_seconds() // 60),
            **_thresholds(runtime),
        },
    )


@router.get("/search", response_model=None)
async def search(runtime: RuntimeDep, q: str = "") -> Response:
    """Go to the transaction with this id, else to the customer."""
    term = q.strip()
    if not term:
        raise InvalidInput("type a transaction id or a customer id")
    if await reads.fetch_label_target(runtime.pool, transaction_id=term) is not None:
        return RedirectResponse(f"/transactions/{term}", status_code=303)
    summary = await reads.fetch_customer_summary(runtime.pool, customer_id=term)
    if summary.get("transactions"):
        return RedirectResponse(f"/customers/{term}", status_code=303)
    raise NotFound(f"no transaction or customer has the id {term!r}")


# --- review queue -----------------------------------------------------------------------------


@router.get("/review", response_class=HTMLResponse)
async def review(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    queue = await charts.fetch_review_queue(
        runtime.pool, limit=REVIEW_PAGE_ROWS, candidates=REVIEW_CANDIDATES
    )
    context = {"queue": queue, "candidates": REVIEW_CANDIDATES, **_thresholds(runtime)}
    return render(request, "review.html", context)


@router.post("/transactions/{transaction_id}/label", response_class=HTMLResponse)
async def label(
    request: Request,
    runtime: RuntimeDep,
    analyst: AnalystDep,
    transaction_id: str,
    verdict: Annotated[str, Form()],
    view: Annotated[str, Form()] = "panel",
) -> Response:
    """Store an analyst's verdict (the API's `label_transaction`); answer with the updated
    label panel, or for a review-queue row, nothing (the row leaves the queue)."""
    if verdict not in ("fraud", "legitimate"):
        raise InvalidInput(f"verdict must be fraud or legitimate, not {verdict!r}")
    stored = await operations.label_transaction(
        runtime,
        transaction_id=transaction_id,
        is_fraud=verdict == "fraud",
        labelled_by=analyst.name,
        source="analyst",
    )
    message = f"{transaction_id} labelled {verdict}"
    if view == "row":
        return HTMLResponse("", headers={"HX-Trigger": _toast(message)})
    labels = await reads.fetch_labels(runtime.pool, transaction_id=transaction_id)
    return render(
        request,
        "_label.html",
        {"transaction_id": stored.transaction_id, "labels": labels},
        headers={"HX-Trigger": _toast(message)},
    )


def _toast(message: str) -> str:
    import json

    return json.dumps({"fraudapp:toast": {"message": message}})


# --- a transaction ----------------------------------------------------------------------------


@router.get("/transactions/{transaction_id}", response_class=HTMLResponse)
async def transaction(request: Request, runtime: RuntimeDep, transaction_id: str) -> HTMLResponse:
    tx = await reads.fetch_transaction(runtime.pool, transaction_id=transaction_id)
    if tx is None:
        raise NotFound(f"transaction {transaction_id!r} is not stored (yet)")
    labels, entries = await asyncio.gather(
        reads.fetch_labels(runtime.pool, transaction_id=transaction_id),
        reads.fetch_entity_list_entries(
            runtime.pool,
            entities=[("customer", tx["customer_id"]), ("terminal", tx["terminal_id"])],
        ),
    )
    explained = await explain(request, runtime, tx["features"], tx["model_version"])
    return render(
        request,
        "transaction.html",
        {
            "tx": tx,
            "transaction_id": transaction_id,
            "labels": labels,
            "entries": {e.entity_type: e for e in entries},
            **explained,
            **_thresholds(runtime),
        },
    )


async def explain(
    request: Request, runtime: Runtime, raw: bytes | None, version: str
) -> dict[str, Any]:
    """The decision's features by name and their exact SHAP waterfall (for its model)."""
    try:
        model = await model_version(request, runtime, version)
    except NotFound:
        return {"features": [], "waterfall": None, "explain_error": f"model {version} is gone"}
    values = decode_features(raw, model.feature_names)
    if values is None:
        return {"features": [], "waterfall": None, "explain_error": "no features stored"}
    contributions = (await asyncio.to_thread(model.exact_contributions, values[None, :]))[0]
    n = len(model.feature_names)
    rows = [
        {
            "name": name,
            "value": None if np.isnan(values[i]) else float(values[i]),
            "contribution": float(contributions[i]),
            "description": FEATURES[name].description if name in FEATURES else "",
            "unit": FEATURES[name].unit if name in FEATURES else "",
        }
        for i, name in enumerate(model.feature_names)
    ]
    figure = figures.waterfall_figure(
        model.feature_names,
        [float(v) for v in values],
        [float(c) for c in contributions[:n]],
        bias=float(contributions[n]),
    )
    return {
        "features": rows,
        "waterfall": figures.figure_json(figure),
        "explain_error": None,
    }


# --- a customer -------------------------------------------------------------------------------


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
async def customer(request: Request, runtime: RuntimeDep, customer_id: str) -> HTMLResponse:
    pool = runtime.pool
    summary, timeline, history, entries = await asyncio.gather(
        reads.fetch_customer_summary(pool, customer_id=customer_id),
        reads.list_transactions(pool, customer_id=customer_id, limit=TIMELINE_ROWS),
        reads.fetch_score_history(pool, customer_id=customer_id),
        reads.fetch_entity_list_entries(pool, entities=[("customer", customer_id)]),
    )
    if not summary.get("transactions") and not entries:
        raise NotFound(f"customer {customer_id!r} has no stored transactions")
    explained: dict[str, Any] = {"features": [], "waterfall": None, "explain_error": None}
    if timeline:
        latest = await reads.fetch_transaction(pool, transaction_id=timeline[0]["transaction_id"])
        if latest is not None:
            explained = await explain(request, runtime, latest["features"], latest["model_version"])
    figure = figures.score_history_figure(history, **_thresholds(runtime))
    return render(
        request,
        "customer.html",
        {
            "customer_id": customer_id,
            "summary": summary,
            "timeline": timeline,
            "history": figures.figure_json(figure),
            "entity_type": "customer",
            "entity_id": customer_id,
            "entry": entries[0] if entries else None,
            "features": explained["features"],
            "latest": timeline[0] if timeline else None,
            **_thresholds(runtime),
        },
    )


@router.post("/lists", response_class=HTMLResponse)
async def put_list_entry(
    request: Request,
    runtime: RuntimeDep,
    analyst: AnalystDep,
    list_name: Annotated[str, Form(alias="list")],
    entity_type: Annotated[str, Form()],
    entity_id: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Block or allow a customer or terminal (the API's `put_list_entry`)."""
    entry = await operations.put_list_entry(
        runtime,
        list_name=list_name,
        entity_type=entity_type,
        entity_id=entity_id,
        reason=reason.strip() or f"{list_name} from the dashboard",
        created_by=analyst.name,
    )
    return render(
        request,
        "_list_entry.html",
        {"entity_type": entity_type, "entity_id": entity_id, "entry": entry},
        headers={"HX-Trigger": _toast(f"{entity_type} {entity_id} is on the {list_name} list")},
    )


@router.post("/lists/{entry_id}/delete", response_class=HTMLResponse)
async def delete_list_entry(
    request: Request, runtime: RuntimeDep, analyst: AnalystDep, entry_id: int
) -> HTMLResponse:
    entry = await operations.delete_list_entry(runtime, entry_id=entry_id)
    log.info("dashboard.list_removed entry_id=%d by=%s", entry_id, analyst.name)
    return render(
        request,
        "_list_entry.html",
        {"entity_type": entry.entity_type, "entity_id": entry.entity_id, "entry": None},
        headers={"HX-Trigger": _toast(f"{entry.entity_type} {entry.entity_id} is off the list")},
    )


# --- models -----------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
async def models(request: Request, runtime: RuntimeDep, version: str | None = None) -> HTMLResponse:
    versions = await asyncio.to_thread(serving.list_versions, runtime.engine.tracking_uri)
    serving_now = serving_version(runtime)
    selected = version or serving_now or (versions[0]["version"] if versions else None)
    context: dict[str, Any] = {
        "versions": versions,
        "serving": serving_now,
        "selected": selected,
        "selected_info": next((v for v in versions if v["version"] == selected), None),
        "training": operations.training_status(runtime),
        "figures": {},
        "live_labelled": 0,
    }
    if selected is not None:
        model = await model_version(request, runtime, selected)
        scores = await charts.fetch_labelled_scores(runtime.pool, model_version=selected)
        context["live_labelled"] = len(scores)
        context["figures"] = {
            "chart-importance": figures.figure_json(
                figures.importance_figure(feature_gains(model))
            ),
            **curves(scores),
        }
    return render(request, "models.html", context)


def feature_gains(model: serving.ServingModel) -> dict[str, float]:
    """Total gain per feature name (XGBoost names unnamed columns f0, f1, …)."""
    gains = model.booster.get_score(importance_type="total_gain")
    named: dict[str, float] = {}
    for key, value in gains.items():
        name = key
        if key not in model.feature_names and key[1:].isdigit():
            name = model.feature_names[int(key[1:])]
        named[name] = float(value)  # type: ignore[arg-type]
    return named


def curves(scores: list[tuple[float, bool]]) -> dict[str, Any]:
    """ROC and precision-recall figures from (probability, is_fraud) pairs."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    y = np.array([fraud for _, fraud in scores], dtype=bool)
    p = np.array([prob for prob, _ in scores], dtype=np.float64)
    if len(np.unique(y)) < 2:
        roc = figures.roc_figure([], [], auc=None)
        pr = figures.pr_figure([], [], ap=None)
    else:
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        roc = figures.roc_figure(*_thin(fpr, tpr), auc=float(roc_auc_score(y, p)))
        pr = figures.pr_figure(*_thin(recall, precision), ap=float(average_precision_score(y, p)))
    return {"chart-roc": figures.figure_json(roc), "chart-pr": figures.figure_json(pr)}


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """At most `CURVE_POINTS` points of a curve, its ends kept."""
    if len(x) > CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(x) - 1, CURVE_POINTS).round().astype(int))
        x, y = x[keep], y[keep]
    return x.tolist(), y.tolist()


@router.post("/models/{version}/promote", response_model=None)
async def promote(runtime: RuntimeDep, admin: AdminDep, version: str) -> Response:
    """Serve `version` now and make it the champion (the API's `promote_version`)."""
    await operations.promote_version(runtime, version=version)
    log.info("dashboard.promoted version=%s by=%s", version, admin.name)
    return Response(status_code=204, headers={"HX-Refresh": "true"})


@router.post("/models/train", response_class=HTMLResponse)
async def train(request: Request, runtime: RuntimeDep, admin: AdminDep) -> HTMLResponse:
    """Retrain on the stored labelled history in the background (the API's `start_training`)."""
    job = await operations.start_training(runtime, requested_by=admin.name)
    return render(request, "_training.html", {"training": job})


@router.get("/partials/training", response_class=HTMLResponse)
async def training_partial(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    return render(request, "_training.html", {"training": operations.training_status(runtime)})
