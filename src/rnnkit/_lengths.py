"""Length bookkeeping shared by every backend: validation, step masks, per-sequence reversal.

Tensors here are time-major: T time steps, B sequences, ``*`` any trailing feature dims.
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_lengths", "step_mask", "permute", "reversed_steps", "reverse_padded", "gather_last"]


def check_lengths(lengths, batch_size: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Validate ``lengths`` against a padded batch and return it as an int64 tensor on ``device``.

    Accepts a 1-D tensor (any device) or a sequence of ints, in any order. Raises ``ValueError``
    with the offending value for anything else.
    """
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError) as err:
            raise ValueError(f"lengths must be a 1-D integer tensor, got {type(lengths).__name__}") from err
        if lengths.numel() == 0:  # torch.as_tensor([]) is float32, yet no lengths is a valid (empty) batch
            lengths = lengths.long()
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    if lengths.numel() != batch_size:
        raise ValueError(f"lengths has {lengths.numel()} entries but the batch has {batch_size} sequences")
    lengths = lengths.to(device=device, dtype=torch.long)
    if batch_size:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 0:
            raise ValueError(f"lengths must be >= 0, got {low}")
        if high > max_len:
            raise ValueError(f"lengths must be <= the padded length {max_len}, got {high}")
    return lengths


def step_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(T, B) bool mask, True where step t is a real step of sequence b (t < lengths[b])."""
    steps = torch.arange(max_len, device=lengths.device)  # (T,)
    return steps[:, None] < lengths[None, :]  # (T, B)


class _Permute(torch.autograd.Function):
    """``x.index_select(0, index)`` for a permutation ``index`` of the rows, differentiated by the
    inverse permutation. Autograd's own rule for index_select (``index_add_`` into a zero tensor)
    costs a fill and a scatter of the whole tensor; a permutation's gradient is just the inverse gather."""

    generate_vmap_rule = True  # the forward is one torch operation, which vmap batches itself

    @staticmethod
    def forward(x, index, inverse):
        return x.index_select(0, index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.index, ctx.inverse = inputs

    @staticmethod
    def backward(ctx, grad):
        return _Permute.apply(grad, ctx.inverse, ctx.index), None, None


def permute(x: torch.Tensor, dim: int, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, index)`` where ``index`` is a permutation and ``inverse`` its inverse
    (``inverse[index] = arange``); differentiable to any order.

    Along ``dim`` > 0 the permutation is applied to the rows of ``x`` viewed as (prod(shape[:dim + 1]), *),
    one block of rows per index of the leading dims: on CPU, ``index_select`` along dim 0 of a contiguous
    tensor copies whole rows and is several times faster than along an inner dim.
    """
    if dim == 0:
        return _Permute.apply(x, index, inverse)
    leading, n = math.prod(x.shape[:dim]), x.shape[dim]
    offsets = torch.arange(leading, device=x.device)[:, None] * n  # (leading, 1)
    rows = x.reshape(leading * n, *x.shape[dim + 1 :])  # (leading * n, *)
    return _Permute.apply(rows, (offsets + index).view(-1), (offsets + inverse).view(-1)).view(x.shape)


def reversed_steps(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(T, B) the step of sequence b that :func:`reverse_padded` puts at step t: ``lengths[b] - 1 - t``
    at real steps, t itself at padding."""
    steps = torch.arange(max_len, device=lengths.device)[:, None]  # (T, 1)
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse each sequence of ``x`` (T, B, *) within its own length; padding stays in place.

    This is what makes the backward direction of a bidirectional layer start at each sequence's
    own last element rather than at the padding. As a permutation of the (T * B) rows it is its own
    inverse, so its gradient is the same reversal. With ``order`` (B,), a permutation of the batch,
    it reverses ``x[:, order]`` (``lengths`` given in that order) in one gather instead of two.
    """
    T, B = x.shape[:2]
    source = reversed_steps(lengths, T)  # (T, B) step read at (t, b)
    columns = torch.arange(B, device=x.device) if order is None else order  # (B,) sequence read at b
    rows = (source * B + columns).view(-1)  # (T * B,) flat row read at (t, b)
    inverse = rows if order is None else torch.empty_like(rows).scatter_(0, rows, torch.arange(T * B, device=x.device))
    return permute(x.reshape(T * B, *x.shape[2:]), 0, rows, inverse).view(x.shape)


def gather_last(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, *) rows of ``x`` (T, B, *) at each sequence's last real step, ``lengths - 1``.

    Sequences of length 0 get step 0; callers substitute the initial state for them.
    """
    T, B = x.shape[:2]
    index = (lengths - 1).clamp(min=0).view(1, B, *([1] * (x.dim() - 2)))
    index = index.expand(1, B, *x.shape[2:])
    return x.gather(0, index).squeeze(0)
