"""The dashboard's Plotly figures, built on the server from query results and sent as JSON.

Pure functions: rows in, a `plotly.graph_objects.Figure` out, in one visual language (the
decision colours of `app.css`, a transparent background, compact margins). `static/app.js`
draws the JSON with the vendored Plotly; a figure with no data says so instead of going blank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from markupsafe import Markup

DECISION_COLORS = {"approve": "#2f855a", "review": "#c77c02", "decline": "#c53030"}
VERDICT_COLORS = {"unlabelled": "#a0aec0", "legitimate": "#2f855a", "fraud": "#c53030"}
ACCENT = "#3b5bdb"
MUTED = "#718096"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def _layout(fig: go.Figure, *, height: int = 300, **extra: Any) -> go.Figure:
    fig.update_layout(
        height=height,
        margin={"l": 56, "r": 16, "t": 16, "b": 44},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font={"family": FONT, "size": 12, "color": "#2d3748"},
        legend={"orientation": "h", "y": -0.22, "x": 0},
        hoverlabel={"font": {"family": FONT}},
        **extra,
    )
    fig.update_xaxes(gridcolor="#edf2f7", zerolinecolor="#e2e8f0", automargin=True)
    fig.update_yaxes(gridcolor="#edf2f7", zerolinecolor="#e2e8f0", automargin=True)
    return fig


def _empty(message: str, *, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=message,
        showarrow=False,
        font={"size": 14, "color": MUTED},
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=height)


def figure_json(fig: go.Figure) -> Markup:
    """The figure as JSON safe to embed in a `<script type="application/json">` element."""
    return Markup(fig.to_json().replace("</", "<\\/"))


# --- overview ---------------------------------------------------------------------------------


def volume_figure(series: Sequence[Mapping[str, Any]], *, bucket_seconds: int) -> go.Figure:
    """Transactions per second over time (bars) and the alert rate among them (line)."""
    if not series:
        return _empty("No decisions in this window yet")
    x = [row["bucket"] for row in series]
    volume = np.array([row["volume"] for row in series], dtype=np.float64)
    alerts = np.array([row["alerts"] for row in series], dtype=np.float64)
    fig = go.Figure()
    fig.add_bar(
        x=x,
        y=volume / bucket_seconds,
        name="transactions / s",
        marker_color="#a3bffa",
        hovertemplate="%{x|%H:%M:%S}<br>%{y:,.1f} tx/s<extra></extra>",
    )
    fig.add_scatter(
        x=x,
        y=np.divide(alerts, volume, out=np.zeros_like(alerts), where=volume > 0),
        name="alert rate",
        yaxis="y2",
        mode="lines+markers",
        line={"color": DECISION_COLORS["decline"], "width": 2},
        marker={"size": 4},
        hovertemplate="%{x|%H:%M:%S}<br>%{y:.2%} alerts<extra></extra>",
    )
    return _layout(
        fig,
        yaxis={"title": {"text": "tx / s"}, "rangemode": "tozero"},
        yaxis2={
            "title": {"text": "alert rate"},
            "overlaying": "y",
            "side": "right",
            "tickformat": ".1%",
            "rangemode": "tozero",
            "showgrid": False,
        },
        bargap=0.1,
    )


def score_histogram_figure(
    rows: Sequence[Mapping[str, Any]], *, bins: int, review_score: int, decline_score: int
) -> go.Figure:
    """Decisions per score bin, stacked by verdict (fraud / legitimate / unlabelled), log y."""
    if not rows:
        return _empty("No decisions in this window yet")
    width = 100 / bins
    centers = [(b + 0.5) * width for b in range(bins)]
    fig = go.Figure()
    for verdict in ("unlabelled", "legitimate", "fraud"):
        counts = np.zeros(bins, dtype=np.int64)
        for row in rows:
            if row["verdict"] == verdict:
                counts[row["bin"]] += row["n"]
        if not counts.any():
            continue
        fig.add_bar(
            x=centers,
            y=counts,
            width=width * 0.92,
            name=verdict,
            marker_color=VERDICT_COLORS[verdict],
            hovertemplate=f"score %{{x:.0f}} ± {width / 2:g}<br>%{{y:,}} {verdict}<extra></extra>",
        )
    for score, label in ((review_score, "review"), (decline_score, "decline")):
        fig.add_vline(
            x=score,
            line={"color": DECISION_COLORS[label], "dash": "dash", "width": 1.5},
            annotation_text=label,
            annotation_position="top left",
            annotation_font_color=DECISION_COLORS[label],
        )
    return _layout(
        fig,
        barmode="stack",
        xaxis={"title": {"text": "risk score"}, "range": [0, 100]},
        yaxis={"title": {"text": "decisions"}, "type": "log", "dtick": 1},
    )


def decision_mix_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """The share of each decision (a list rule's share shown apart), as a donut."""
    if not rows:
        return _empty("No decisions in this window yet")
    labels, values, colors = [], [], []
    for row in rows:
        rule = f" ({row['rule'].replace('_', ' ')})" if row["rule"] else ""
        labels.append(f"{row['decision']}{rule}")
        values.append(row["n"])
        color = DECISION_COLORS.get(row["decision"], MUTED)
        colors.append(color if not rule else _lighter(color))
    fig = go.Figure(
        go.Pie(
            labels=labels,
            values=values,
            hole=0.55,
            sort=False,
            marker={"colors": colors, "line": {"color": "#ffffff", "width": 2}},
            textinfo="percent",
            textposition="inside",
            hovertemplate="%{label}<br>%{value:,} (%{percent})<extra></extra>",
        )
    )
    # Slices too thin for their label stay unlabelled (the hover and legend still tell).
    return _layout(fig, showlegend=True, uniformtext={"minsize": 11, "mode": "hide"})


def _lighter(color: str) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(int(c + (255 - c) * 0.45) for c in (r, g, b)))


def reasons_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """How often each reason code is attached to reviews and declines, most frequent on top."""
    if not rows:
        return _empty("No reviews or declines in this window yet")
    ordered = list(reversed(rows))
    fig = go.Figure(
        go.Bar(
            x=[row["n"] for row in ordered],
            y=[row["feature"] or row["code"] for row in ordered],
            orientation="h",
            marker_color=ACCENT,
            hovertemplate="%{y}<br>%{x:,} alerts<extra></extra>",
        )
    )
    return _layout(fig, xaxis={"title": {"text": "alerts citing it"}}, margin_l=8)


def amount_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Amounts per decision as boxes (5–95 % whiskers, quartiles, median, mean), log y."""
    if not rows:
        return _empty("No decisions in this window yet")
    fig = go.Figure()
    for row in rows:
        p5, q1, median, q3, p95 = row["quantiles"]
        fig.add_box(
            x=[row["decision"]],
            name=row["decision"],
            q1=[q1],
            median=[median],
            q3=[q3],
            lowerfence=[p5],
            upperfence=[p95],
            mean=[row["mean"]],
            marker_color=DECISION_COLORS.get(row["decision"], MUTED),
            boxpoints=False,
            hoverinfo="y",
        )
    return _layout(
        fig, showlegend=False, yaxis={"title": {"text": "amount"}, "type": "log", "dtick": 1}
    )


# --- a transaction, a customer ----------------------------------------------------------------


def waterfall_figure(
    names: Sequence[str],
    values: Sequence[float],
    contributions: Sequence[float],
    *,
    bias: float,
    top: int = 12,
) -> go.Figure:
    """Exact SHAP contributions to the log-odds, from the base value to the prediction.

    The `top` largest by magnitude are shown with their values; the rest are summed in one bar.
    """
    order = np.argsort(-np.abs(np.asarray(contributions)), kind="stable")
    shown = [int(i) for i in order[:top]]
    rest = float(sum(contributions[int(i)] for i in order[top:]))
    labels = ["base value"]
    measures = ["absolute"]
    amounts = [bias]
    for i in reversed(shown):
        labels.append(f"{names[i]} = {_short(values[i])}")
        measures.append("relative")
        amounts.append(float(contributions[i]))
    if len(order) > top:
        labels.insert(1, f"{len(order) - top} other features")
        measures.insert(1, "relative")
        amounts.insert(1, rest)
    margin = bias + float(np.sum(contributions))
    labels.append("prediction")
    measures.append("total")
    amounts.append(margin)
    fig = go.Figure(
        go.Waterfall(
            orientation="h",
            y=labels,
            x=amounts,
            measure=measures,
            increasing={"marker": {"color": DECISION_COLORS["decline"]}},
            decreasing={"marker": {"color": DECISION_COLORS["approve"]}},
            totals={"marker": {"color": ACCENT}},
            connector={"line": {"color": "#cbd5e0", "width": 1}},
            hovertemplate="%{y}<br>%{x:+.3f} log-odds<extra></extra>",
        )
    )
    probability = 1.0 / (1.0 + np.exp(-margin))
    return _layout(
        fig,
        height=max(320, 28 * len(labels) + 80),
        xaxis={"title": {"text": f"log-odds of fraud → prediction {probability:.1%}"}},
        showlegend=False,
        margin_l=8,
    )


def _short(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3g}"


def score_history_figure(
    rows: Sequence[Mapping[str, Any]], *, review_score: int, decline_score: int
) -> go.Figure:
    """A customer's risk scores over (transaction) time, each point coloured by its decision."""
    if not rows:
        return _empty("No transactions stored for this customer")
    fig = go.Figure(
        go.Scatter(
            x=[row["occurred_at"] for row in rows],
            y=[row["score"] for row in rows],
            mode="lines+markers",
            line={"color": "#cbd5e0", "width": 1},
            marker={
                "size": 8,
                "color": [DECISION_COLORS.get(row["decision"], MUTED) for row in rows],
            },
            text=[row["transaction_id"] for row in rows],
            hovertemplate="%{x|%Y-%m-%d %H:%M}<br>score %{y}<br>%{text}<extra></extra>",
        )
    )
    for score, label in ((review_score, "review"), (decline_score, "decline")):
        fig.add_hline(y=score, line={"color": DECISION_COLORS[label], "dash": "dash", "width": 1})
    return _layout(
        fig, showlegend=False, yaxis={"title": {"text": "risk score"}, "range": [0, 100]}
    )


# --- models -----------------------------------------------------------------------------------


def roc_figure(fpr: Sequence[float], tpr: Sequence[float], *, auc: float | None) -> go.Figure:
    if not len(fpr):
        return _empty("No curve yet: needs labelled frauds<br>and legitimate transactions")
    fig = go.Figure()
    fig.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": MUTED, "dash": "dash"}
    )
    name = f"model (AUC {auc:.3f})" if auc is not None else "model"
    fig.add_scatter(x=fpr, y=tpr, mode="lines", name=name, line={"color": ACCENT, "width": 2})
    return _layout(
        fig,
        xaxis={"title": {"text": "false positive rate"}, "range": [0, 1]},
        yaxis={"title": {"text": "true positive rate"}, "range": [0, 1.02]},
    )


def pr_figure(
    recall: Sequence[float], precision: Sequence[float], *, ap: float | None
) -> go.Figure:
    if not len(recall):
        return _empty("No curve yet: needs labelled frauds<br>and legitimate transactions")
    name = f"model (AP {ap:.3f})" if ap is not None else "model"
    fig = go.Figure(
        go.Scatter(x=recall, y=precision, mode="lines", name=name, line={"color": ACCENT})
    )
    return _layout(
        fig,
        showlegend=True,
        xaxis={"title": {"text": "recall"}, "range": [0, 1]},
        yaxis={"title": {"text": "precision"}, "range": [0, 1.02]},
    )


def importance_figure(gains: Mapping[str, float], *, top: int = 15) -> go.Figure:
    """Share of total gain per feature, the `top` largest."""
    total = sum(gains.values())
    if not total:
        return _empty("No feature importance for this version")
    ranked = sorted(gains.items(), key=lambda item: item[1], reverse=True)[:top]
    ranked.reverse()
    fig = go.Figure(
        go.Bar(
            x=[value / total for _, value in ranked],
            y=[name for name, _ in ranked],
            orientation="h",
            marker_color=ACCENT,
            hovertemplate="%{y}<br>%{x:.1%} of total gain<extra></extra>",
        )
    )
    return _layout(
        fig,
        height=max(300, 24 * len(ranked) + 70),
        xaxis={"title": {"text": "share of total gain"}, "tickformat": ".0%"},
        margin_l=8,
    )
