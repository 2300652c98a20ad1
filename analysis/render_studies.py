"""Figures of the studies (placement, GLUE curve, AdaLoRA ranks): thin renderers over their data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.rank_maps import RankMap
from analysis.render import plt, save_figure
from analysis.tables import Table


def curve_png(table: Table, path: Path, *, x: str = "trainable_params", group: str = "method",
              score: str = "score") -> Path:  # fmt: skip
    """Mean score (points) against ``x`` per ``group``; bars: 3 std over seeds, as study 003."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, g) in enumerate(table.data.groupby(group, sort=True)):
        g = g.sort_values(x)
        ax.errorbar(g[x], g["mean"], yerr=3 * g["std"].fillna(0), marker="o", capsize=3,
                    c=f"C{i}", label=str(name))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{score} (points, ± 3 std)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def rank_heatmaps_png(maps: list[RankMap], path: Path) -> Path:
    """One panel per (task, budget): AdaLoRA's mean final rank per module and layer."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps) + 1, 3.6), squeeze=False)
    for ax, m in zip(axes[0], maps, strict=True):
        values = m.values.to_numpy(dtype=float)
        vmax = max(float(values.max()), float(m.init_rank or 0), 1.0)
        image = ax.imshow(values, cmap="magma", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(values.shape[1]), [str(c) for c in m.values.columns])
        ax.set_yticks(range(values.shape[0]), list(m.values.index))
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    c="w" if v < vmax / 2 else "k")  # fmt: skip
        budget = f"{m.budget_params:,}" if m.budget_params else "?"
        ax.set_title(f"{m.task} @ {budget} (n={m.n_trials})", fontsize=9)
        ax.set_xlabel("layer")
        fig.colorbar(image, ax=ax, label=f"final rank (init {m.init_rank})")
    return save_figure(fig, path)


__all__ = ["curve_png", "rank_heatmaps_png"]
