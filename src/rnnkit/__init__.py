"""rnnkit: recurrent sequence models from their equations, length-aware, nn.LSTM-compatible."""

from rnnkit import _vml
from rnnkit.batching import (
    BucketBatchSampler,
    budget_batches,
    check_lengths,
    collate,
    last_valid,
    lengths_to_mask,
    mask_to_lengths,
    pad_sequences,
)
from rnnkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, RNNCell, RNNInputError
from rnnkit.layers import GRU, LSTM, RNN, LayerNormLSTM
from rnnkit.packing import Packing
from rnnkit.vocab import Vocab, char_tokenize, whitespace_tokenize, word_tokenize

__version__ = "0.1.0"

_vml.settle_dispatch()

__all__: list[str] = [
    "LSTMCell", "GRUCell", "RNNCell", "LayerNormLSTMCell", "LSTM", "GRU", "RNN", "LayerNormLSTM", "RNNInputError",
    "Vocab", "whitespace_tokenize", "char_tokenize", "word_tokenize",
    "Packing", "check_lengths", "pad_sequences", "collate", "BucketBatchSampler", "budget_batches", "last_valid",
    "lengths_to_mask", "mask_to_lengths",
]
