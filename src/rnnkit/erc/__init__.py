"""Speaker-aware emotion recognition in conversation (ERC), built on the rnnkit library and its trainer.

Install with ``pip install "rnnkit[erc]"`` (scikit-learn, matplotlib, transformers, ...). Data flows one way:

- :mod:`~rnnkit.erc.data` (with :mod:`~rnnkit.erc.corpus`): dialogues read from MELD, EmoryNLP, DailyDialog, JSONL
  or the built-in synthetic corpus;
- :mod:`~rnnkit.erc.encoders`: utterance vectors from words, characters, a transformer or a features file;
- :mod:`~rnnkit.erc.fusion` and :mod:`~rnnkit.erc.model`: the speaker-history fusion and :class:`ERCModel`;
- :mod:`~rnnkit.erc.losses`, :mod:`~rnnkit.erc.metrics`, :mod:`~rnnkit.erc.plots`: what training optimises, reports
  and draws;
- :mod:`~rnnkit.erc.recipe`: data → encoder → model → :class:`rnnkit.trainer.Trainer` → run directory (what
  ``rnnkit train`` runs), and the scoring and labeling of ``rnnkit evaluate`` and ``rnnkit predict``;
- :mod:`~rnnkit.erc.runs`: a run directory loaded back to predict from Python;
- :mod:`~rnnkit.erc.explain`: what a run's two RNNs carry through a dialogue (what ``rnnkit explain`` draws);
- :mod:`~rnnkit.erc.onnx_run`: a run as one ONNX model, and predictions from it in onnxruntime (``rnnkit export``,
  ``rnnkit predict --onnx``; needs the ``onnx`` extra, imported on first use).
"""

from rnnkit.erc.corpus import BUILTIN_LABELS, builtin_corpus
from rnnkit.erc.data import (
    FORMATS,
    SPLITS,
    DataError,
    Dialogue,
    Utterance,
    check_labels,
    detect_format,
    iter_file,
    label_set,
    metric_name,
    neutral_label,
    read_file,
    read_split,
    resolve_format,
    write_corpus,
    write_jsonl,
)
from rnnkit.erc.encoders import UtteranceEncoder, build_encoder, load_encoder
from rnnkit.erc.explain import Explanation, explain_dialogues, lstm_gates, write_explanations
from rnnkit.erc.fusion import SpeakerHistoryFusion
from rnnkit.erc.losses import class_weights, erc_loss, supervised_contrastive
from rnnkit.erc.metrics import compute_metrics
from rnnkit.erc.model import IGNORE_INDEX, DialogueBatch, ERCConfig, ERCModel, collate_dialogues
from rnnkit.erc.onnx_run import ONNX_WINDOW, OnnxRun, export_run, load_onnx, predict_onnx_records
from rnnkit.erc.recipe import ABLATIONS, RunData, evaluate_runs, load_data, predict_records, score, train_run
from rnnkit.erc.runs import Run, RunError, load_run, load_runs, predict_probabilities

__all__ = [
    "Utterance", "Dialogue", "DataError", "FORMATS", "SPLITS", "read_split", "read_file", "iter_file", "detect_format",
    "resolve_format", "write_jsonl", "write_corpus", "check_labels", "label_set", "metric_name", "neutral_label",
    "builtin_corpus", "BUILTIN_LABELS",
    "UtteranceEncoder", "build_encoder", "load_encoder",
    "SpeakerHistoryFusion", "ERCConfig", "ERCModel", "DialogueBatch", "collate_dialogues", "IGNORE_INDEX",
    "erc_loss", "class_weights", "supervised_contrastive", "compute_metrics",
    "ABLATIONS", "RunData", "load_data", "train_run", "score", "evaluate_runs", "predict_records",
    "Run", "RunError", "load_run", "load_runs", "predict_probabilities",
    "Explanation", "explain_dialogues", "lstm_gates", "write_explanations",
    "export_run", "load_onnx", "OnnxRun", "predict_onnx_records", "ONNX_WINDOW",
]
