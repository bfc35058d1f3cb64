"""What the two RNNs of a trained :class:`ERCModel` carry, utterance by utterance, and a picture of it per dialogue.

For each utterance of a dialogue, :func:`explain_dialogues` gives

- the mean activation over the H hidden units of the input, forget and output gates of the dialogue-context
  BiLSTM at the utterance's step, per layer and direction;
- the same for the speaker-history BiLSTM of :class:`SpeakerHistoryFusion`, at the utterance's step of its
  speaker's own track (the track runs over that speaker's utterances only);
- the share of the fusion's output that came from the speaker's history, :math:`\\lVert y - x \\rVert /
  \\lVert y \\rVert` for the fusion's input :math:`x` and output :math:`y = x + P\\,\\mathrm{LSTM}(\\dots)`.

The layers' fused kernels do not expose their gates, so the forward pass is run as prediction runs it
(:meth:`Run.probabilities`) with forward hooks that capture what enters the context LSTM and the fusion, and the
gates are recomputed from those inputs and each layer's parameters with the LSTM equations (:func:`lstm_gates`),
which need nothing of the layer but its torch-named parameters:

.. math::
    (a_i, a_f, a_g, a_o) = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}, \\qquad
    c_t = \\sigma(a_f) \\odot c_{t-1} + \\sigma(a_i) \\odot \\tanh(a_g), \\qquad
    h_t = W_{hr}\\,(\\sigma(a_o) \\odot \\tanh(c_t))

(no :math:`W_{hr}` without projection). The reverse direction starts at each sequence's own last step.

Shapes: B sequences (dialogues or speaker tracks), T steps, U utterances, D input width, H hidden units,
P output width of a direction (proj_size or H), n layers, dirs directions, L labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnkit.erc.fusion import SpeakerHistoryFusion
from rnnkit.erc.plots import explanation_png
from rnnkit.erc.records import Dialogue
from rnnkit.erc.runs import Run
from rnnkit.layers import LSTM
from rnnkit.trainer import atomic_write_bytes

__all__ = ["GATES", "Explanation", "lstm_gates", "explain_dialogues", "write_explanations"]

GATES = ("input", "forget", "output")


@dataclass
class Explanation:
    """What :func:`explain_dialogues` finds for one dialogue (U utterances); the arrays are float64.

    probabilities: (U, L) class probabilities, columns in ``labels`` order.
    context_gates: (n, dirs, U, 3) mean input, forget and output gate activation of the context LSTM at each
        utterance, per layer and direction (0 forward, 1 backward); None for a model without context RNN.
    speaker_gates: (n, dirs, U, 3) the same for the speaker-history LSTM, at the utterance's step of its
        speaker's track; None for a model without speaker-history fusion.
    history_share: (U,) ``||fused - input|| / ||fused||`` of the fusion; None without fusion.
    """

    dialogue: Dialogue
    labels: list[str]
    probabilities: np.ndarray
    context_gates: np.ndarray | None
    speaker_gates: np.ndarray | None
    history_share: np.ndarray | None

    @property
    def predictions(self) -> list[str]:
        """The most probable label of each utterance."""
        return [self.labels[k] for k in self.probabilities.argmax(-1)]


def _reverse(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence of ``x`` (B, T, ...) reversed within its own length; padding stays where it is. Its own
    inverse, so the backward direction runs forward over the reversed sequences and is reversed back."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None]  # (1, T)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, index.view(*index.shape, *(1,) * (x.dim() - 2)).expand_as(x))


def _direction(lstm: LSTM, suffix: str, x: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of one layer over ``x`` (B, T, D) from t = 0: its outputs (B, T, P) and its mean gate
    activations (B, T, 3), both zero past each length (``real`` (B, T)). Padding comes only after a sequence's
    real steps, so running through it never changes a real step."""
    w_ih, w_hh = getattr(lstm, f"weight_ih{suffix}"), getattr(lstm, f"weight_hh{suffix}")
    w_hr = getattr(lstm, f"weight_hr{suffix}", None)
    xg = x @ w_ih.T  # (B, T, 4H)
    if lstm.bias:
        xg = xg + getattr(lstm, f"bias_ih{suffix}") + getattr(lstm, f"bias_hh{suffix}")
    B, T, H = x.shape[0], x.shape[1], lstm.hidden_size
    h, c = x.new_zeros(B, w_hh.shape[1]), x.new_zeros(B, H)  # (B, P), (B, H)
    outputs, means = [], []
    for t in range(T):
        a_i, a_f, a_g, a_o = (xg[:, t] + h @ w_hh.T).chunk(4, -1)  # (B, H) each
        i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
        c = f * c + i * torch.tanh(a_g)
        h = o * torch.tanh(c)
        h = h if w_hr is None else h @ w_hr.T  # (B, P)
        outputs.append(h)
        means.append(torch.stack([i.mean(-1), f.mean(-1), o.mean(-1)], -1))  # (B, 3)
    keep = real[..., None].to(x.dtype)  # (B, T, 1)
    return torch.stack(outputs, 1) * keep, torch.stack(means, 1) * keep


@torch.no_grad()
def lstm_gates(lstm: LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean input, forget and output gate activations of ``lstm`` (a batch-first :class:`rnnkit.LSTM` or
    ``torch.nn.LSTM``) over ``x`` (B, T, D) with ``lengths`` (B,): (n, dirs, B, T, 3), zero past each length.

    Computed from the layer's parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, the biases and ``weight_hr_l{k}``,
    with the suffix ``_reverse`` for the backward direction) with the equations of the module docstring, as in eval
    mode (no dropout between layers): each layer reads the previous layer's outputs, and the backward direction
    starts at each sequence's own end.
    """
    if not lstm.batch_first:
        raise ValueError("lstm_gates needs a batch_first LSTM")
    lengths = lengths.to(x.device)
    real = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]  # (B, T)
    dirs = 2 if lstm.bidirectional else 1
    layers = []
    for layer in range(lstm.num_layers):
        outputs, means = [], []
        for direction in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            if direction:
                out, mean = _direction(lstm, suffix, _reverse(x, lengths), real)
                out, mean = _reverse(out, lengths), _reverse(mean, lengths)
            else:
                out, mean = _direction(lstm, suffix, x, real)
            outputs.append(out)
            means.append(mean)
        x = torch.cat(outputs, -1)  # (B, T, dirs*P): the next layer's input
        layers.append(torch.stack(means))  # (dirs, B, T, 3)
    return torch.stack(layers)


def _speaker_gates(fusion: SpeakerHistoryFusion, utterances: torch.Tensor, speakers: torch.Tensor,
                   lengths: torch.Tensor) -> torch.Tensor:
    """:func:`lstm_gates` of the fusion's LSTM over every (dialogue, speaker) track, put back at the utterances
    the steps belong to: (n, dirs, B, U, 3), zero at padding."""
    tracks = []  # (dialogue, positions of its speaker's utterances)
    for b, n in enumerate(lengths.tolist()):
        ids = speakers[b, :n]
        for speaker in torch.unique(ids):
            tracks.append((b, (ids == speaker).nonzero().squeeze(1)))
    turns = torch.tensor([len(positions) for _, positions in tracks])  # (K,)
    padded = utterances.new_zeros(len(tracks), int(turns.max()), utterances.shape[2])  # (K, T, D)
    for k, (b, positions) in enumerate(tracks):
        padded[k, : len(positions)] = utterances[b, positions]
    gates = lstm_gates(fusion.rnn, padded, turns)  # (n, dirs, K, T, 3)
    out = gates.new_zeros(*gates.shape[:2], *utterances.shape[:2], 3)  # (n, dirs, B, U, 3)
    for k, (b, positions) in enumerate(tracks):
        out[:, :, b, positions] = gates[:, :, k, : len(positions)]
    return out


def explain_dialogues(run: Run, dialogues: Iterable[Dialogue]) -> list[Explanation]:
    """One :class:`Explanation` per dialogue, from the forward pass :meth:`Run.probabilities` makes (so the
    probabilities are those ``rnnkit predict`` gives), with hooks on ``run.model.context`` and ``run.model.fusion``
    capturing what enters them (and what the fusion returns)."""
    dialogues = list(dialogues)
    model = run.model
    context_inputs, fusion_calls = [], []
    handles = []
    if model.context is not None:
        handles.append(model.context.register_forward_hook(
            lambda module, args, kwargs, output: context_inputs.append((args[0], kwargs["lengths"])),
            with_kwargs=True))
    if model.fusion is not None:
        handles.append(model.fusion.register_forward_hook(
            lambda module, args, output: fusion_calls.append((*args, output))))
    try:
        probabilities = run.probabilities(dialogues)
    finally:
        for handle in handles:
            handle.remove()

    context, speaker, share = [], [], []  # per dialogue
    for x, lengths in context_inputs:
        gates = lstm_gates(model.context, x, lengths)  # (n, dirs, B, U, 3)
        context.extend(gates[:, :, b, :n] for b, n in enumerate(lengths.tolist()))
    for utterances, speakers, lengths, fused in fusion_calls:
        gates = _speaker_gates(model.fusion, utterances, speakers, lengths)  # (n, dirs, B, U, 3)
        ratio = (fused - utterances).norm(dim=-1) / fused.norm(dim=-1)  # (B, U)
        for b, n in enumerate(lengths.tolist()):
            speaker.append(gates[:, :, b, :n])
            share.append(ratio[b, :n])

    def array(parts: list[torch.Tensor], k: int) -> np.ndarray | None:
        return parts[k].double().cpu().numpy() if parts else None

    return [Explanation(dialogue, list(run.labels), probs.double().numpy(), array(context, k), array(speaker, k),
                        array(share, k))
            for k, (dialogue, probs) in enumerate(zip(dialogues, probabilities))]


def _file_name(index: int, dialogue_id: str) -> str:
    """``0007-d12.png``: the position keeps names unique and in input order, the id (made safe for any file
    system, cut to 60 characters) says which dialogue it is."""
    return f"{index:04d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', dialogue_id)[:60]}.png"


def write_explanations(explanations: Iterable[Explanation], directory, title: str = "") -> list[Path]:
    """Draw each explanation (:func:`rnnkit.erc.plots.explanation_png`, ``title`` heading every figure) into
    ``directory``, created when missing, one PNG per dialogue written atomically; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, explanation in enumerate(explanations):
        path = directory / _file_name(index, explanation.dialogue.id)
        atomic_write_bytes(path, explanation_png(explanation, title))
        paths.append(path)
    return paths
