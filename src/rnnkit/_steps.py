"""One time step of each recurrence, as its gate equations, given the step's input projection.

These are the definitions the rest of the package is checked against: the cells of
:mod:`rnnkit.cells` are a projection of the input followed by one of these steps, and the layers'
twice-differentiable path (:mod:`rnnkit._equations`) loops them over time. Plain torch operations
only, so autograd differentiates them any number of times and ``torch.func`` transforms them.

Every tensor may carry leading batch-like dimensions: a state ``h`` (..., n, P) is multiplied by
``w_hh`` (..., G, P) with ``matmul``, so the same step serves a cell (w_hh (G, P), h (B, P)) and
both directions of a layer at once (w_hh (dirs, G, P), h (dirs, n, P)). Biases and layer-norm
parameters broadcast against the gates: (G,) for a cell, (dirs, 1, G) for a layer.

Letters: n rows (sequences) in the step, H hidden units, P output size (H or proj_size), G gates
(4H, 3H or H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lstm_step", "gru_step", "rnn_step", "layernorm_lstm_step", "layer_norm"]


def _recurrent(h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None) -> torch.Tensor:
    """h W_hh^T (+ b_hh): (..., n, P) -> (..., n, G)."""
    out = torch.matmul(h, w_hh.transpose(-1, -2))
    return out if b_hh is None else out + b_hh


def layer_norm(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LN over the last dimension with a gain ``weight`` and a shift ``bias`` that broadcast against ``a``
    (``F.layer_norm`` wants them shaped exactly like the normalised dimension, which a (dirs, 1, G) gain is not)."""
    out = F.layer_norm(a, a.shape[-1:], eps=eps) * weight
    return out if bias is None else out + bias


def lstm_step(xg, h, c, w_hh, b_hh=None, w_hr=None):
    r"""One LSTM step. ``xg`` (..., n, 4H) = :math:`W_{ih} x + b_{ih}`, gates in torch's order i, f, g, o;
    ``h`` (..., n, P), ``c`` (..., n, H). Returns ``(h', c')``:

    .. math::
        c' = \sigma(f) \odot c + \sigma(i) \odot \tanh(g), \qquad h' = W_{hr} (\sigma(o) \odot \tanh(c'))

    (no :math:`W_{hr}` without projection).
    """
    i, f, g, o = (xg + _recurrent(h, w_hh, b_hh)).chunk(4, -1)  # (..., n, H) each
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if w_hr is None else torch.matmul(h, w_hr.transpose(-1, -2))), c


def gru_step(xg, h, w_hh, b_hh=None):
    r"""One GRU step. ``xg`` (..., n, 3H) = :math:`W_{ih} x + b_{ih}`, gates r, z, n; ``h`` (..., n, H). Returns

    .. math::
        h' = (1 - z) \odot n + z \odot h, \quad n = \tanh(x_n + r \odot (W_{hn} h + b_{hn}))
    """
    x_r, x_z, x_n = xg.chunk(3, -1)  # (..., n, H) each
    h_r, h_z, h_n = _recurrent(h, w_hh, b_hh).chunk(3, -1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_step(xg, h, w_hh, b_hh=None, nonlinearity: str = "tanh"):
    r"""One Elman RNN step. ``xg`` (..., n, H) = :math:`W_{ih} x + b_{ih}`; ``h`` (..., n, H). Returns
    :math:`h' = \phi(x_g + W_{hh} h + b_{hh})` with :math:`\phi` = tanh or relu."""
    a = xg + _recurrent(h, w_hh, b_hh)
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)


def layernorm_lstm_step(xg, h, c, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, eps: float = 1e-5):
    r"""One LayerNorm-LSTM step (Ba et al. 2016, "Layer Normalization", sec. 3.1, eq. 20-22).

    ``xg`` (..., n, 4H) = :math:`\mathrm{LN}_{ih}(W_{ih} x) + b_{ih} + b_{hh}` plus LN_hh's shift (every
    constant term of the gates); ``h``, ``c`` (..., n, H). Returns ``(h', c')``:

    .. math::
        (a_i, a_f, a_g, a_o) = x_g + \mathrm{LN}_{hh}(W_{hh} h), \quad
        c' = \sigma(a_f) \odot c + \sigma(a_i) \odot \tanh(a_g), \quad
        h' = \sigma(a_o) \odot \tanh(\mathrm{LN}_c(c'))
    """
    gates = xg + layer_norm(_recurrent(h, w_hh, None), ln_hh_weight, None, eps)  # (..., n, 4H)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(layer_norm(c, ln_c_weight, ln_c_bias, eps))
    return h, c
