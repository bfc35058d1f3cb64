"""Packed order: the real steps of a padded batch, sorted longest first and laid out time-major.

As in torch's ``PackedSequence``, the n_t sequences still running at step t are the first n_t rows of
a (B, ·) state and one contiguous block of n_t rows of an (N, ·) buffer, so a recurrence over packed
rows never touches padding and each step's work shrinks with n_t.

Public for callers that lay out their own rows and run a layer on them directly with the layers'
``run_packed`` (the speaker-history fusion of :mod:`rnnkit.erc.fusion` does), skipping ``forward``'s
padding and reordering.

Shapes: T time steps, B sequences, S the longest length, N real steps in all (sum of lengths).
"""

from __future__ import annotations

from bisect import bisect_right

import torch

from rnnkit._lengths import permute

__all__ = ["Packing"]


class Packing:
    """The real steps of a padded (T, B, ·) batch with ``lengths`` (B,), in packed time-major order.

    Sorted row j is sequence ``order[j]``, the j-th longest (ties in batch order); packed rows
    ``sum(batch_sizes[:t]) + j``, j < ``batch_sizes[t]``, hold step t. ``lengths=None``: all T
    steps, batch order, and packing is a reshape.
    """

    def __init__(self, lengths: torch.Tensor | None, T: int, B: int):
        self.T, self.B = T, B
        if lengths is None:
            self.batch_sizes, self.order = ([B] * T if B else []), None
            return
        sorted_lengths, self.order = torch.sort(lengths, descending=True, stable=True)  # (B,), (B,)
        ascending = sorted_lengths.tolist()[::-1]  # the one host sync
        S = ascending[-1] if B else 0
        self.batch_sizes = [B - bisect_right(ascending, t) for t in range(S)]  # n_t, non-increasing
        self.inverse = torch.argsort(self.order)  # (B,) sorted row of each sequence
        steps = torch.arange(S, device=lengths.device)[:, None]  # (S, 1)
        real = steps < sorted_lengths  # (S, B): row t is True on its first n_t entries
        self._seq = self.order.expand(S, B)[real]  # (N,) sequence of each packed row
        self._step = steps.expand(S, B)[real]  # (N,) its time step
        self._offsets = torch.tensor([0, *self.batch_sizes[:-1]], device=lengths.device).cumsum(0)  # (S,)
        self._flip = self.rows((sorted_lengths - 1 - steps)[real], self._seq)  # (N,) see reverse()

    def rows(self, step: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Packed row of step ``step`` of sequence ``seq`` (both (N,) or broadcastable)."""
        if self.order is None:
            return step * self.B + seq
        return self._offsets[step] + self.inverse[seq]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, B, *) -> (N, *), the real steps in packed order."""
        if self.order is None:
            return x.reshape(self.T * self.B, *x.shape[2:])
        return x[self._step, self._seq]

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(N, *) -> (T, B, *), undoing :meth:`pack`; 0 past each length."""
        if self.order is None:
            return y.view(self.T, self.B, *y.shape[1:])
        return y.new_zeros(self.T, self.B, *y.shape[1:]).index_put_((self._step, self._seq), y)

    def reversal(self, device: torch.device) -> torch.Tensor:
        """(N,) the rows that :meth:`reverse` reads: row j of the result is row ``reversal[j]`` of its input.
        Its own inverse."""
        if self.order is None:
            steps = torch.arange(self.T - 1, -1, -1, device=device)[:, None]  # (T, 1), last step first
            return (steps * self.B + torch.arange(self.B, device=device)).view(-1)
        return self._flip

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """(N, *) -> (N, *): packed row (t, b) gets step ``lengths[b] - 1 - t`` of sequence b, i.e. each
        sequence read backwards from its own last element, which is what the reverse direction of a
        layer runs on. Its own inverse."""
        if self.order is None:
            return y.view(self.T, self.B, *y.shape[1:]).flip(0).view(y.shape)
        return permute(y, 0, self._flip, self._flip)

    def sort(self, state: torch.Tensor) -> torch.Tensor:
        """(dirs, B, *) state in batch order -> sorted order."""
        return state if self.order is None else permute(state, 1, self.order, self.inverse)

    def unsort(self, state: torch.Tensor) -> torch.Tensor:
        """(dirs, B, *) state in sorted order -> batch order."""
        return state if self.order is None else permute(state, 1, self.inverse, self.order)
