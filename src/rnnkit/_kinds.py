"""One spec per recurrence kind: everything that differs between the LSTM, the GRU, the two Elman RNNs
and the LayerNorm-LSTM, in one place.

The cells (:mod:`rnnkit.cells`), the layers (:mod:`rnnkit.layers`) and the fused-kernel backend
(:mod:`rnnkit._native`) read the number of gates, the states, torch's op and the step of
:mod:`rnnkit._steps` from a :class:`Kind` instead of branching on the kind's name. The names are
torch's ``nn.RNNBase.mode`` strings where torch has the kind.

Letters: H hidden units, H_out = proj_size or H, G = num_gates * H gate rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ._steps import gru_step, layernorm_lstm_step, lstm_step, rnn_step

__all__ = ["Kind", "KINDS", "rnn_mode", "check_size"]


@dataclass(frozen=True)
class Kind:
    """What a recurrence is made of.

    Attributes:
        mode: its name, ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"`` (torch's) or ``"LayerNormLSTM"``.
        num_gates: gate blocks stacked by rows in ``weight_ih`` / ``weight_hh`` (G = num_gates * H).
        has_cell: the state is ``(h, c)`` (LSTM kinds) rather than ``h``.
        native: torch's fused op (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``, ``torch.rnn_relu``);
            None where torch has none.
        step: one step of the recurrence from :mod:`rnnkit._steps`, given the input projection.
        flag_gates: ``(gate block, sign)`` pairs that the native backend's padding flag drives to
            saturation so that a padding step keeps the state (:mod:`rnnkit._native`); empty when no gate
            can hold the state (an Elman RNN), which then runs torch's packed op with lengths instead.
        extra: parameters beyond torch's, ``(name, rows, init)`` with rows ``"G"`` or ``"H"``.
    """

    mode: str
    num_gates: int
    has_cell: bool
    native: Callable | None
    step: Callable
    flag_gates: tuple[tuple[int, float], ...] = ()
    extra: tuple[tuple[str, str, float], ...] = ()

    def state_sizes(self, hidden_size: int, proj_size: int = 0) -> tuple[int, ...]:
        """The last dimension of each state: ``(H_out,)`` or ``(H_out, H)``."""
        return (proj_size or hidden_size, hidden_size) if self.has_cell else (proj_size or hidden_size,)

    def zero_state(self, like: torch.Tensor, *leading: int, hidden_size: int,
                   proj_size: int = 0) -> tuple[torch.Tensor, ...]:
        """Zero states shaped ``(*leading, size)`` for each of :meth:`state_sizes`, on ``like``'s device and dtype."""
        return tuple(like.new_zeros(*leading, size) for size in self.state_sizes(hidden_size, proj_size))

    def zero_state_for(self, w_hh: torch.Tensor, *leading: int) -> tuple[torch.Tensor, ...]:
        """:meth:`zero_state` with the sizes read off a layer's ``w_hh`` (G, H_out), on its device and dtype."""
        H, H_out = w_hh.shape[0] // self.num_gates, w_hh.shape[1]
        return self.zero_state(w_hh, *leading, hidden_size=H, proj_size=H_out)

    def extra_shapes(self, hidden_size: int) -> dict[str, tuple[int]]:
        """``{name: shape}`` of the :attr:`extra` parameters."""
        rows = {"G": self.num_gates * hidden_size, "H": hidden_size}
        return {name: (rows[size],) for name, size, _ in self.extra}

    def extra_init(self, name: str) -> float:
        """The constant an :attr:`extra` parameter starts from; ``name`` with or without a layer's suffix
        (``ln_c_bias`` or ``ln_c_bias_l1_reverse``)."""
        return next(init for extra, _, init in self.extra if name == extra or name.startswith(f"{extra}_l"))

    def reset_parameters(self, parameters, hidden_size: int) -> None:
        """Initialise ``(name, parameter)`` pairs as torch does: weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)),
        the :attr:`extra` parameters (layer-norm gains 1, shifts 0) their constant. Shared by cells and layers."""
        bound = 1.0 / math.sqrt(hidden_size)
        for name, weight in parameters:
            if name.startswith("ln_"):
                nn.init.constant_(weight, self.extra_init(name))
            else:
                nn.init.uniform_(weight, -bound, bound)


_LAYER_NORMS = tuple((f"ln_{part}_{kind}", rows, init) for part, rows in (("ih", "G"), ("hh", "G"), ("c", "H"))
                     for kind, init in (("weight", 1.0), ("bias", 0.0)))

KINDS: dict[str, Kind] = {kind.mode: kind for kind in (
    # padding flag: input gate i -> 0 (nothing written into c), forget gate f -> 1 (c kept)
    Kind("LSTM", 4, True, torch.lstm, lstm_step, flag_gates=((0, -1.0), (1, 1.0))),
    # padding flag: update gate z -> 1, so h' = z * h + (1 - z) * n = h
    Kind("GRU", 3, False, torch.gru, gru_step, flag_gates=((1, 1.0),)),
    Kind("RNN_TANH", 1, False, torch.rnn_tanh, partial(rnn_step, nonlinearity="tanh")),
    Kind("RNN_RELU", 1, False, torch.rnn_relu, partial(rnn_step, nonlinearity="relu")),
    Kind("LayerNormLSTM", 4, True, None, layernorm_lstm_step, extra=_LAYER_NORMS),
)}


def rnn_mode(nonlinearity) -> str:
    """The Elman RNN's mode for ``nonlinearity``; ``ValueError`` (as torch) for anything but "tanh" or "relu"."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


def check_size(name: str, value) -> None:
    """``input_size`` / ``hidden_size``: ``TypeError`` unless an int, ``ValueError`` unless > 0 (torch's types)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
