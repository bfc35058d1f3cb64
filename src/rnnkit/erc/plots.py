"""PNG figures: for a run directory the test confusion matrix, per-class scores and the per-epoch training curves,
and for ``rnnkit explain`` what the RNNs carry in one dialogue.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed) and
returned as PNG bytes, so the caller can write them atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:  # explain draws with this module: a real import would be circular
    from rnnkit.erc.explain import Explanation

__all__ = ["confusion_png", "curves_png", "class_scores_png", "class_curves_png", "explanation_png",
           "explanation_figsize", "EXPLANATION_DPI"]

# Explanation figures are saved at this resolution without trimming, so that their pixel size is their
# explanation_figsize times it, which a caller can rely on.
EXPLANATION_DPI = 100


def _png(figure: Figure, tight: bool = True) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    if tight:
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    else:
        figure.savefig(buffer, format="png", dpi=EXPLANATION_DPI)
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


def class_scores_png(report: Mapping[str, Mapping[str, float]], labels: Sequence[str], title: str) -> bytes:
    """Precision, recall and F1 of each class as grouped bars (percent), from the ``report`` of
    :func:`rnnkit.erc.compute_metrics` (fractions); each class's tick gives its support."""
    names = ("precision", "recall", "f1-score")
    values = np.array([[100 * report[label][name] for name in names] for label in labels])  # (C, 3)
    figure = Figure(figsize=(1.6 + 0.9 * len(labels), 3.8))
    ax = figure.add_subplot()
    width = 0.27
    for k, (name, color) in enumerate(zip(names, ("tab:blue", "tab:orange", "tab:green"))):
        bars = ax.bar(np.arange(len(labels)) + (k - 1) * width, values[:, k], width, color=color,
                      label=name.removesuffix("-score").replace("f1", "F1"))
        ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)  # a score of 0 has no bar to see
    ax.set_xticks(range(len(labels)), [f"{label}\n(n={report[label]['support']})" for label in labels], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title(title, pad=24)
    return _png(figure)


def class_curves_png(epochs: Sequence[int], class_f1: Mapping[str, Sequence[float]], best_epoch: int) -> bytes:
    """Dev F1 (percent) of each class per epoch (``class_f1``: class name -> one score per epoch; NaN where
    an epoch has none), the best epoch marked."""
    figure = Figure(figsize=(6.4, 3.8))
    ax = figure.add_subplot()
    for label, scores in class_f1.items():
        ax.plot(epochs, scores, "o-", markersize=3, label=label)
    ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("dev F1 (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("dev F1 per class")
    return _png(figure)


# Explanation figure geometry, in inches: one row per utterance, a fixed-width text panel, one column per gate.
_ROW, _HEADER, _FOOTER = 0.3, 1.45, 1.0
_TEXT, _CELL, _SHARE, _MARGIN = 8.6, 0.42, 1.3, 0.4
# Where each column of the text panel starts, as a fraction of its width.
_TEXT_COLUMNS = {"#": 0.0, "speaker": 0.035, "utterance": 0.18, "predicted (p)": 0.77, "gold": 0.9, "": 1.0}
_MEASURE = TextToPath()


def _fit(text: str, inches: float, size: float = 9, weight: str = "normal") -> str:
    """``text`` on one line, cut with an ellipsis to at most ``inches`` wide in the default font at ``size``
    points: names and utterances are of any length, and a cut by character count would clip wide letters."""
    font = FontProperties(size=size, weight=weight)
    text = " ".join(text.split())

    def width(candidate: str) -> float:
        return _MEASURE.get_text_width_height_descent(candidate, font, ismath=False)[0] / 72

    if width(text) <= inches:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with its ellipsis lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if width(text[:middle] + "…") <= inches else (low, middle - 1)
    return text[:low] + "…"


def _column_inches(name: str) -> float:
    """The width a text-panel column leaves its text: its share of the panel, less what the layout's padding
    takes from the panel and a gap before the next column."""
    names = list(_TEXT_COLUMNS)
    share = _TEXT_COLUMNS[names[names.index(name) + 1]] - _TEXT_COLUMNS[name]
    return share * (_TEXT - 0.5) - 0.12


def _gate_matrix(gates: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(n, dirs, U, 3) gate means -> a (U, n*dirs*3) heat map and its column names ("f←"; with several layers
    the layer below, "L2", on a second line)."""
    n, dirs, U, _ = gates.shape
    names = [gate + "→←"[direction] + (f"\nL{layer + 1}" if n > 1 else "")
             for layer in range(n) for direction in range(dirs) for gate in "ifo"]
    return gates.transpose(2, 0, 1, 3).reshape(U, -1), names


def explanation_figsize(explanation: Explanation) -> tuple[float, float]:
    """Width and height in inches of :func:`explanation_png`'s figure: the height grows with the utterances, so a
    long dialogue keeps rows as tall as a short one's."""
    columns = sum(g.shape[0] * g.shape[1] * 3 for g in (explanation.context_gates, explanation.speaker_gates)
                  if g is not None)
    width = _TEXT + _CELL * columns + (_SHARE if explanation.history_share is not None else 0) + _MARGIN
    height = _HEADER + _ROW * max(len(explanation.dialogue.utterances), 4) + _FOOTER
    # Whole quarter inches: exact in binary, so that times EXPLANATION_DPI they are whole pixels, which
    # matplotlib would otherwise truncate (1533.9999 px -> 1533).
    return math.ceil(4 * width) / 4, math.ceil(4 * height) / 4


def explanation_png(explanation: Explanation, title: str = "") -> bytes:
    """One dialogue: its utterances (speaker, text, predicted label and probability, gold label) beside heat maps,
    one row per utterance, of the context and speaker-history LSTM gate means (a column per gate, direction and
    layer, on one 0-1 colour scale) and of the speaker-history share of the fused vector."""
    e, U = explanation, len(explanation.dialogue.utterances)
    panels = [(name, *_gate_matrix(g)) for name, g in (("dialogue-context LSTM gates", e.context_gates),
                                                       ("speaker-history LSTM gates", e.speaker_gates))
              if g is not None]
    widths = [_TEXT] + [_CELL * len(columns) for _, _, columns in panels]
    if e.history_share is not None:
        widths.append(_SHARE)
    figure = Figure(figsize=explanation_figsize(e), layout="constrained")
    grid = figure.add_gridspec(2, len(widths), width_ratios=widths, height_ratios=[_ROW * max(U, 4), 0.12])
    speakers = len({u.speaker for u in e.dialogue.utterances})
    figure.suptitle(f"{title}dialogue {_fit(e.dialogue.id, 4.0, size=10)}: {U} utterance{'s' * (U != 1)}, "
                    f"{speakers} speaker{'s' * (speakers != 1)}\n"
                    "gates: mean activation over the hidden units of the input (i), forget (f) and output (o) gate "
                    "at each utterance's step, per direction (→ forward, ← backward)"
                    + (", per layer (L1 the first)" if any(g is not None and len(g) > 1 for g in (e.context_gates, e.speaker_gates))
                       else ""),
                    fontsize=10, parse_math=False)

    text_ax = figure.add_subplot(grid[0, 0])
    _utterance_panel(text_ax, e, U)
    for k, (name, matrix, columns) in enumerate(panels, start=1):
        ax = figure.add_subplot(grid[0, k], sharey=text_ax)
        image = _heat_map(ax, matrix, columns, name, "viridis", 1.0)
    if panels:
        figure.colorbar(image, cax=figure.add_subplot(grid[1, 1:len(panels) + 1]), orientation="horizontal",
                        label="mean gate activation (0 closed, 1 open)")
    if e.history_share is not None:
        ax = figure.add_subplot(grid[0, -1], sharey=text_ax)
        top = max(1.0, float(np.nanmax(e.history_share)))
        image = _heat_map(ax, e.history_share[:, None], [""], "share of the fused\nvector from the\nspeaker's history",
                          "Oranges", top)
        figure.colorbar(image, cax=figure.add_subplot(grid[1, -1]), orientation="horizontal",
                        label="‖fused − input‖\n/ ‖fused‖")
    text_ax.set_ylim(max(U, 4) - 0.5, -0.5)  # after imshow, which sets the shared limits to the U rows alone
    return _png(figure, tight=False)


def _utterance_panel(ax, e: Explanation, U: int) -> None:
    """Row u: number, speaker, text, predicted label and probability, gold label (green when predicted, else red)."""
    columns = {name: x for name, x in _TEXT_COLUMNS.items() if name}
    ax.set_xlim(0, 1)
    ax.xaxis.tick_top()
    ax.set_xticks(list(columns.values()), list(columns), ha="left", fontsize=9, fontweight="bold")
    ax.tick_params(length=0)
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    for u, (utterance, predicted, probs) in enumerate(zip(e.dialogue.utterances, e.predictions, e.probabilities)):
        cells = {"#": (str(u + 1), {"fontsize": 8, "color": "gray"}),
                 "speaker": (utterance.speaker, {"fontweight": "bold"}),
                 "utterance": (utterance.text, {}),
                 "predicted (p)": (f"{predicted} {probs.max():.2f}", {})}
        if utterance.label is not None:
            cells["gold"] = (utterance.label, {"color": "tab:green" if utterance.label == predicted else "tab:red"})
        for name, (text, style) in cells.items():
            style = {"fontsize": 9, **style}
            text = _fit(text, _column_inches(name), style["fontsize"], style.get("fontweight", "normal"))
            # parse_math=False: a "$" in a dialogue is a dollar sign, not the start of a formula.
            ax.text(columns[name], u, text, va="center", parse_math=False, **style)


def _heat_map(ax, matrix: np.ndarray, columns: list[str], title: str, cmap: str, top: float):
    """``matrix`` (U, columns) on a 0..``top`` colour scale, each cell also giving its value."""
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=top, aspect="auto", interpolation="nearest")
    ax.xaxis.tick_top()
    ax.set_xticks(range(len(columns)), columns, fontsize=9)
    ax.tick_params(length=0, labelleft=False)
    ax.set_title(title, fontsize=9)
    for (row, col), value in np.ndenumerate(matrix):
        if not math.isnan(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived brightness of the cell
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return image
