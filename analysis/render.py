"""Figures over the analysis data (matplotlib, Agg): thin renderers, no computation of their own."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from analysis.budget import HeatMapInfo  # noqa: E402
from analysis.pareto import ParetoInfo  # noqa: E402
from analysis.selection import POINTS  # noqa: E402
from analysis.tables import Table  # noqa: E402

DPI = 120


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _points(info: ParetoInfo, col: str) -> float:
    return POINTS if col.endswith("score") else 1.0


LOG_SPAN = 10.0  # a log x axis only where sizes span at least this factor (else ticks collide)


def pareto_png(info: ParetoInfo, path: Path, *, title: str = "") -> Path:
    """Front as a step line; points coloured by method (filled on the front, faint when
    dominated), trials not completed as hollow markers; a log x axis only over a wide range."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    sy = _points(info, info.y)
    shown = info.excluded.dropna(subset=[info.x, info.y])
    frames = [f for f in (info.front, info.dominated, shown) if not f.empty]
    methods = sorted({str(m) for f in frames for m in f.get("method", [])})
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    if not info.front.empty:
        ax.step(info.front[info.x], info.front[info.y] * sy, where="post", c="0.3", lw=1,
                label="front (chosen on dev)")  # fmt: skip
    for m in methods:
        for frame, style in ((info.front, {"s": 45, "zorder": 3}),
                             (info.dominated, {"s": 20, "alpha": 0.45})):  # fmt: skip
            part = frame[frame["method"].astype(str) == m] if "method" in frame else frame[:0]
            if not part.empty:
                ax.scatter(part[info.x], part[info.y] * sy, c=colour[m], **style)  # type: ignore[arg-type]
        ax.scatter([], [], c=colour[m], label=m)
    if not shown.empty:
        ax.scatter(shown[info.x], shown[info.y] * sy, facecolors="none", edgecolors="0.4",
                   label="not completed (excluded)")  # fmt: skip
    xs = np.concatenate([f[info.x].to_numpy(dtype=float) for f in frames]) if frames else []
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() >= LOG_SPAN:
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel(info.x)
    ax.set_ylabel(f"{info.y} (points)" if sy != 1.0 else info.y)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def few_shot_png(table: Table, path: Path, *, score: str = "test_score") -> Path:
    """E2: mean score over seeds vs training examples per method; bars = std, band = min..max."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (method, g) in enumerate(table.data.groupby("method", sort=True)):
        g = g.sort_values("train_samples")
        ax.errorbar(g["train_samples"], g["mean"], yerr=g["std"].fillna(0), marker="o",
                    capsize=3, c=f"C{i}", label=method)  # fmt: skip
        ax.fill_between(g["train_samples"], g["min"], g["max"], color=f"C{i}", alpha=0.15)
    ax.set_xscale("log")
    sizes = sorted(table.data["train_samples"].unique())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sizes, [f"{int(k):,}" for k in sizes])
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"{score} (points)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def heatmap_png(info: HeatMapInfo, path: Path) -> Path:
    """E4: per cell, the score of the trial best on dev there, and the number of completed trials."""
    values = info.values.to_numpy(dtype=float)
    counts = info.counts.to_numpy()
    fig, ax = plt.subplots(
        figsize=(1.2 * max(3, values.shape[1]) + 2, 0.6 * max(2, values.shape[0]) + 1.5)
    )
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in info.values.columns])
    ax.set_yticks(range(values.shape[0]), [str(i) for i in info.values.index])
    for (r, c), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(c, r, f"{v:.1f}\nn={counts[r, c]}", ha="center", va="center", fontsize=7, c="w")
    ax.set_xlabel(info.x_label)
    ax.set_ylabel(info.y_label)
    fig.colorbar(image, ax=ax, label=f"{info.score} of the cell's best on dev (points)")
    return save_figure(fig, path)


def plotly_available() -> bool:
    return importlib.util.find_spec("plotly") is not None


def optuna_pareto_html(study: Any, path: Path, target_names: list[str]) -> Path | None:
    """The interactive Optuna Pareto plot; None when plotly is not installed."""
    if not plotly_available():
        return None
    from optuna.visualization import plot_pareto_front

    path.parent.mkdir(parents=True, exist_ok=True)
    plot_pareto_front(study, target_names=target_names).write_html(str(path))
    return path
