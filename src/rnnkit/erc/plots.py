"""PNG figures for a run directory: the test confusion matrix and the per-epoch training curves.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed) and
returned as PNG bytes, so the caller can write them atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["confusion_png", "curves_png"]


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """Row-normalised confusion matrix (rows: gold label, columns: predicted), each cell also giving its count."""
    counts = np.asarray(matrix, dtype=np.int64)  # (C, C)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.7 * len(labels)
    figure = Figure(figsize=(size + 1.5, size))
    ax = figure.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the gold row")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if rates[row, col] > 0.5 else "black")
    return _png(figure)


def curves_png(history: Sequence[Mapping[str, float]], monitor: str, best_epoch: int) -> bytes:
    """Training loss (left axis) and the monitored dev score (right axis) per epoch, the best epoch marked."""
    epochs = [record["epoch"] for record in history]
    figure = Figure(figsize=(6.0, 3.6))
    loss_ax = figure.add_subplot()
    loss_ax.plot(epochs, [record["train_loss"] for record in history], "o-", color="tab:red", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("train loss", color="tab:red")
    score_ax = loss_ax.twinx()
    score_ax.plot(epochs, [record[monitor] for record in history], "s-", color="tab:blue", label=f"dev {monitor}")
    score_ax.set_ylabel(f"dev {monitor} (%)", color="tab:blue")
    score_ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
    handles = loss_ax.get_legend_handles_labels()[0] + score_ax.get_legend_handles_labels()[0]
    loss_ax.legend(handles=handles, loc="center right", fontsize=8)
    loss_ax.set_title("training curve")
    return _png(figure)
