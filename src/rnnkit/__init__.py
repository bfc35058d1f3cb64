"""rnnkit: recurrent sequence models from their equations, length-aware, nn.LSTM-compatible."""

from rnnkit import _vml
from rnnkit.batching import (
    BucketBatchSampler,
    budget_batches,
    collate,
    last_valid,
    lengths_to_mask,
    mask_to_lengths,
    pad_sequences,
)
from rnnkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, LSTMState
from rnnkit.erc.corpus import builtin_corpus
from rnnkit.erc.data import DataError, Dialogue, Utterance, detect_format, read_file, read_split
from rnnkit.erc.fusion import SpeakerHistoryFusion
from rnnkit.erc.model import ERCConfig, ERCModel
from rnnkit.erc.runs import Run, RunError, load_run, load_runs, predict_probabilities
from rnnkit.erc.training import Trainer, TrainerConfig, TrainResult
from rnnkit.layers import GRU, LSTM, LayerNormLSTM
from rnnkit.vocab import Vocab, char_tokenize, whitespace_tokenize, word_tokenize

__version__ = "0.1.0"

_vml.settle_dispatch()

__all__: list[str] = [
    "LSTMCell", "GRUCell", "LayerNormLSTMCell", "LSTMState", "LSTM", "GRU", "LayerNormLSTM",
    "Utterance", "Dialogue", "DataError", "read_split", "read_file", "detect_format", "builtin_corpus",
    "Vocab", "whitespace_tokenize", "char_tokenize", "word_tokenize",
    "pad_sequences", "collate", "BucketBatchSampler", "budget_batches", "last_valid", "lengths_to_mask", "mask_to_lengths",
    "SpeakerHistoryFusion", "ERCConfig", "ERCModel", "Run", "RunError", "load_run", "load_runs", "predict_probabilities",
    "Trainer", "TrainerConfig", "TrainResult",
]
