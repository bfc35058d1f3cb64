"""Speaker-history fusion: each utterance meets the earlier and later turns of its own speaker.

In a conversation every speaker carries a state of their own (mood, stance) that their next turn
continues; DialogueRNN (Majumder et al. 2019, sec. 3.2) models it with a party GRU per speaker.
Here the same idea is an LSTM run over each speaker's own sequence of utterances within a
dialogue, and its output is added to the utterance it belongs to:

.. math::
    y_{b,u} = x_{b,u} + P\\,\\mathrm{LSTM}\\big(x_{b,s}^{(1)}, \\dots, x_{b,s}^{(n_{b,s})}\\big)_{r_{b,u}}

where :math:`s` is the speaker of utterance :math:`u` of dialogue :math:`b`, :math:`x^{(k)}_{b,s}`
that speaker's :math:`k`-th utterance, :math:`r_{b,u}` the rank of :math:`u` among them and
:math:`P` a learned projection (identity when the LSTM output already has width :math:`D`).

All (dialogue, speaker) tracks of a batch run through the LSTM as one batch with their own
lengths, so no direction ever reads padding or another speaker's turn, and there is no Python
loop over dialogues or speakers.

Why the tracks are never padded: a batch of 32 MELD-like dialogues has ~140 tracks of up to 10
turns but only ~2.5 turns per track on average, so a padded (K, T, D) batch is ~75% padding,
and a fused kernel run over it (``backend="native"``) spends most of its time there. The
utterances are instead put straight into packed order (tracks sorted by length, time-major, no
padding row; :class:`rnnkit.packing.Packing`) and each layer runs the gate equations (the
``backend="equations"`` path of :class:`rnnkit.LSTM`, both directions at once): one
input-projection matmul over the N real utterances, then per turn only the tracks that have that
turn. On a CPU this is ~2.5x faster than the fused kernel on the padded tracks (see
BENCHMARKS.md), so the LSTM is built with ``backend="equations"`` and its layers are run on the
packed utterances directly.

Shapes: B dialogues, U utterances (padded), D utterance width, H hidden, K tracks (one per
(dialogue, speaker) pair), N real utterances, T the most turns any speaker takes.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit import Packing, check_lengths
from rnnkit.layers import LSTM

__all__ = ["SpeakerHistoryFusion"]


class SpeakerHistoryFusion(nn.Module):
    """Add to each utterance the output of an LSTM run over its speaker's utterances.

    Args:
        input_size: utterance width D; the output has the same width.
        hidden_size: LSTM hidden size H per direction.
        num_layers: stacked LSTM layers.
        bidirectional: if True (the default) a turn also sees the speaker's later turns.
        dropout: dropout between stacked LSTM layers (as in ``torch.nn.LSTM``).

    Attributes:
        rnn: the ``rnnkit.LSTM(input_size, hidden_size, num_layers, batch_first=True, ...,
            backend="equations")`` holding the weights; its parameters are named like
            ``torch.nn.LSTM``'s, so a torch state_dict loads into it. The fusion runs it on the packed
            tracks with :meth:`rnnkit.LSTM.run_packed` (see the module docstring).
        proj: ``nn.Linear(directions * hidden_size, input_size)`` mapping the LSTM output back to
            width D when the two differ, else ``nn.Identity``.

    ``forward(utterances, speakers, lengths)``:
        utterances: (B, U, D) float; speakers: (B, U) integer ids, any values (negative or large
        too), compared only within a dialogue; lengths: (B,) number of real utterances per
        dialogue. Returns (B, U, D): ``utterances + proj(LSTM output)`` at real positions; the
        padding positions (u >= lengths[b]) are returned unchanged, whatever their speaker id.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.rnn = LSTM(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout,
            backend="equations",
        )
        out_size = hidden_size * (2 if bidirectional else 1)
        self.proj = nn.Identity() if out_size == input_size else nn.Linear(out_size, input_size)

    def forward(self, utterances: torch.Tensor, speakers: torch.Tensor, lengths) -> torch.Tensor:
        self._check(utterances, speakers)
        B, U, D = utterances.shape
        lengths = check_lengths(lengths, B, U, utterances.device)
        real = torch.arange(U, device=utterances.device) < lengths[:, None]  # (B, U)
        if not bool(real.any()):
            return utterances
        track, rank, turns = _tracks(speakers.to(utterances.device), real)  # (N,), (N,), (K,)
        num_tracks, T = turns.numel(), int(turns.max())

        packing = Packing(turns, T, num_tracks)
        row = packing.rows(rank, track)  # (N,) packed row of each real utterance, in utterance order
        flat = real.view(-1).nonzero().squeeze(1)  # (N,) positions of the real utterances in the (B*U) grid
        position = flat[torch.argsort(row)]  # (N,) grid position of each packed row
        grid = utterances.reshape(B * U, D)
        history = self.rnn.run_packed(grid.index_select(0, position), packing)[0]  # (N, dirs*H), packed order
        return grid.index_add(0, position, self.proj(history)).view(B, U, D)

    def _check(self, utterances: torch.Tensor, speakers: torch.Tensor) -> None:
        if not isinstance(utterances, torch.Tensor) or utterances.dim() != 3:
            shape = tuple(utterances.shape) if isinstance(utterances, torch.Tensor) else type(utterances).__name__
            raise ValueError(f"utterances must be a (B, U, D) tensor, got {shape}")
        if not utterances.is_floating_point():
            raise ValueError(f"utterances must be floating point, got dtype {utterances.dtype}")
        if utterances.shape[2] != self.input_size:
            raise ValueError(
                f"utterances have width {utterances.shape[2]} but the fusion was built for input_size={self.input_size}"
            )
        if not isinstance(speakers, torch.Tensor) or tuple(speakers.shape) != tuple(utterances.shape[:2]):
            shape = tuple(speakers.shape) if isinstance(speakers, torch.Tensor) else type(speakers).__name__
            raise ValueError(f"speakers must be a (B, U) = {tuple(utterances.shape[:2])} tensor, got {shape}")
        if speakers.is_floating_point() or speakers.is_complex() or speakers.dtype == torch.bool:
            raise ValueError(f"speakers must be an integer tensor, got dtype {speakers.dtype}")

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}"


def _tracks(speakers: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Track id and within-track rank of every real utterance (in ``real``'s row-major order),
    and the number of turns of each track.

    A track is one (dialogue, speaker) pair. Speaker ids are first made dense across the batch
    (so any int64 works without overflow), then combined with the dialogue index into one key.
    The rank is the utterance's position among its track's utterances: a stable sort by track
    keeps utterance order within each track, and subtracting each track's start offset counts.
    """
    dialogue = torch.arange(real.shape[0], device=real.device)[:, None].expand_as(real)[real]  # (N,)
    dense, inverse = torch.unique(speakers[real], return_inverse=True)  # (S,), (N,)
    track_key = dialogue * dense.numel() + inverse  # (N,)
    _, track = torch.unique(track_key, return_inverse=True)  # (N,) in 0..K-1
    turns = torch.bincount(track)  # (K,)
    order = torch.sort(track, stable=True).indices  # (N,)
    start = torch.cumsum(turns, 0) - turns  # (K,) first sorted position of each track
    rank = torch.empty_like(track)
    rank[order] = torch.arange(track.numel(), device=track.device) - start[track[order]]
    return track, rank, turns
