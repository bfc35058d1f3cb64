"""Scores for emotion recognition in conversation, as the ERC literature reports them.

MELD and EmoryNLP results are weighted-average F1 over all classes (Poria et al. 2019, "MELD";
Zahiri and Choi 2018, "Emotion Detection on TV Show Transcripts"). DailyDialog is ~83% "no
emotion", so papers report micro-averaged F1 over the other classes only (e.g. Zhong et al.
2019, "KET"; Ghosal et al. 2020, "COSMIC"): predicting neutral everywhere then scores 0, not 83.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

__all__ = ["compute_metrics"]


def compute_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str], neutral: str | None = None
) -> dict:
    """Weighted F1, accuracy, neutral-free micro F1, a per-class report and the confusion matrix.

    ``y_true`` and ``y_pred`` are label indices (lists, arrays or tensors) into ``labels``, the
    class names in index order. Every class in ``labels`` is scored, even one absent from this
    split (its F1 is 0, never an error). Returns a JSON-serialisable dict:

    - ``"weighted_f1"``: F1 averaged over classes weighted by true support, in percent.
    - ``"accuracy"``: in percent.
    - ``"micro_f1_no_neutral"``: micro F1 over every class except ``neutral``, in percent;
      only when ``neutral`` (a name in ``labels``) is given.
    - ``"report"``: ``{class name: {"precision", "recall", "f1-score", "support"}}`` plus the
      averages, as sklearn's ``classification_report`` gives them (fractions, not percent).
    - ``"confusion"``: ``confusion[i][j]`` counts true class i predicted as j, in ``labels`` order.
    """
    labels = list(labels)
    if not labels or not all(isinstance(name, str) for name in labels):
        raise ValueError(f"labels must be a non-empty list of class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels!r}")
    if neutral is not None and neutral not in labels:
        raise ValueError(f"neutral must be one of the labels {labels}, got {neutral!r}")
    y_true, y_pred = _indices(y_true, "y_true", len(labels)), _indices(y_pred, "y_pred", len(labels))
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty; there is nothing to score")

    classes = list(range(len(labels)))
    metrics = {
        "weighted_f1": 100 * float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "accuracy": 100 * float(accuracy_score(y_true, y_pred)),
    }
    if neutral is not None:
        emotions = [c for c in classes if labels[c] != neutral]
        micro = f1_score(y_true, y_pred, labels=emotions, average="micro", zero_division=0)
        metrics["micro_f1_no_neutral"] = 100 * float(micro)
    report = classification_report(
        y_true, y_pred, labels=classes, target_names=labels, output_dict=True, zero_division=0
    )
    metrics["report"] = _plain(report)
    metrics["confusion"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
    return metrics


def _indices(values: Sequence[int], name: str, num_labels: int) -> np.ndarray:
    """``values`` as a 1-D int64 array of valid label indices; ValueError naming ``name`` otherwise."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer label indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_labels):
        bad = array[(array < 0) | (array >= num_labels)][0]
        raise ValueError(f"{name} holds {bad}, which is not a label index in [0, {num_labels})")
    return array.astype(np.int64)


def _plain(value):
    """``value`` with numpy scalars turned into Python floats and ints, so json.dumps accepts it."""
    if isinstance(value, dict):
        # sklearn gives support as a float; it is a count.
        return {key: int(item) if key == "support" else _plain(item) for key, item in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value
