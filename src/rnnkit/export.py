"""ONNX export of rnnkit's length-aware layers, lengths included: no packing in the graph.

The model takes a padded batch and its lengths: inputs ``input`` (T, B, D) (or (B, T, D) with
``batch_first``), ``lengths`` (B,) int64 and, with ``initial_state=True``, ``h0`` (L * dirs, B, H_out)
(and ``c0`` (L * dirs, B, H) for the LSTM kinds); outputs ``output`` (T, B, dirs * H_out) (or
batch-first), ``h_n`` (and ``c_n``). B and T are dynamic. It computes what the layer's
``forward(input, hx, lengths=lengths)`` computes, in eval mode (no dropout): outputs exactly 0 past
each length, final states from each sequence's last real step, the reverse direction starting at
each sequence's own end, and a length-0 sequence giving zero output and its initial state back.

``torch.onnx.export`` would trace whatever the layer's forward runs (a backend's kernels, or torch's
sorting and packing for a PackedSequence, which rejects length 0); here the graph is written from the
layer's parameters instead, the same for every backend, and also from a ``torch.nn.LSTM`` / ``GRU`` /
``RNN``, whose parameters are the same.

It is built with :mod:`onnx.helper` (:mod:`rnnkit._onnx_graph`), one of two ways per kind (:func:`append_layer`
adds the same nodes to a larger graph under construction, a :class:`Graph`):

* ``LSTM`` (without ``proj_size``), ``GRU``, ``RNN`` (tanh and relu): ONNX's own ``LSTM``, ``GRU`` and
  ``RNN`` operators, one per layer, with ``sequence_lens``, which run each sequence to its own length and
  its reverse direction from its own end, as rnnkit does; runtimes have fused kernels for them. The
  weights are reordered to ONNX's gates (LSTM i, o, f, c; GRU z, r, h with ``linear_before_reset=1``,
  which is torch's GRU). Two things ONNX leaves undefined are made explicit: the output past a length
  is masked to 0, and a length-0 sequence's final state is set to its initial state (onnxruntime
  returns zeros there).
* ``LayerNormLSTM`` and ``LSTM`` with ``proj_size``: ONNX's LSTM has neither layer norms inside the
  recurrence nor an output projection, so each layer is a ``Scan`` over time of the step equations of
  :mod:`rnnkit._steps`, both directions at once; the input projection (and LN_ih) is one MatMul over
  all steps before it, a padding step keeps the state and outputs zeros, and the reverse direction
  reads each sequence reversed within its length (``ReverseSequence``).

Shapes: T time steps, B batch, D input features, H hidden units, H_out = proj_size or H,
L layers, dirs = 2 if bidirectional else 1.
"""

from __future__ import annotations

import os

import torch

try:
    import onnx
except ImportError as error:  # onnx is an optional dependency
    raise ImportError('rnnkit.export needs the onnx package: pip install "rnnkit[onnx]"') from error
from onnx import TensorProto, helper

from ._onnx_graph import Graph, Steps, operator_layer, scan_layer

__all__ = ["export_onnx", "append_layer", "Graph", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17  # the first with LayerNormalization
_OPERATORS = {"LSTM": ("LSTM", "Tanh"), "GRU": ("GRU", "Tanh"), "RNN_TANH": ("RNN", "Tanh"), "RNN_RELU": ("RNN", "Relu")}
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
_LAYER_NORMS = ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")


def export_onnx(layer, path: str | os.PathLike | None, *, initial_state: bool = False,
                opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Write ``layer`` (an :class:`rnnkit.LSTM`, :class:`~rnnkit.GRU`, :class:`~rnnkit.RNN` or
    :class:`~rnnkit.LayerNormLSTM` in float32) to ``path`` as an ONNX model and return the model (``path``
    None: return it only).

    Inputs and outputs as in the module docstring; ``initial_state`` adds the inputs ``h0`` (and ``c0``),
    zeros otherwise. ``opset`` is the ONNX opset the model declares, from :data:`DEFAULT_OPSET` up.

    >>> import rnnkit
    >>> model = export_onnx(rnnkit.GRU(3, 4, bidirectional=True), None)
    >>> [node.op_type for node in model.graph.node if node.op_type == "GRU"]
    ['GRU']
    """
    mode = _mode(layer)
    _check_arguments(initial_state, opset)
    dirs, H_out = 2 if layer.bidirectional else 1, layer.proj_size or layer.hidden_size
    names, sizes = ("h", "c") if mode in ("LSTM", "LayerNormLSTM") else ("h",), (H_out, layer.hidden_size)
    batch, time = ("B", "T") if layer.batch_first else ("T", "B")
    g = Graph()
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, time, layer.input_size]),
              helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"])]
    x = g.op("Transpose", "input", perm=[1, 0, 2]) if layer.batch_first else "input"  # (T, B, D)
    states = [f"{name}0" for name in names] if initial_state else None
    if initial_state:
        inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [layer.num_layers * dirs, "B", size])
                   for s, size in zip(states, sizes)]
    x, finals = append_layer(g, layer, x, "lengths", states)  # (T, B, dirs * H_out)
    if layer.batch_first:
        x = g.op("Transpose", x, perm=[1, 0, 2])  # (B, T, dirs * H_out)
    g.op("Identity", x, outputs=["output"])
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, time, dirs * H_out])]
    for name, size, final in zip(names, sizes, finals):
        g.op("Identity", final, outputs=[f"{name}_n"])
        outputs.append(helper.make_tensor_value_info(f"{name}_n", TensorProto.FLOAT,
                                                     [layer.num_layers * dirs, "B", size]))

    graph = helper.make_graph(g.nodes, type(layer).__name__, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rnnkit")
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


def append_layer(g: Graph, layer, x: str, lengths: str, state: list[str] | None = None) -> tuple[str, list[str]]:
    """Add the nodes of ``layer`` (as :func:`export_onnx` takes it) to the graph ``g`` under construction, for a
    model that runs a layer inside a larger graph (:mod:`rnnkit.erc.onnx_run` runs three).

    ``x`` names a time-major (T, B, D) float tensor of ``g`` whatever the layer's ``batch_first``, ``lengths``
    a (B,) int64 one, ``state`` the initial ``[h0(, c0)]`` (each (L * dirs, B, ·); None: zeros). Returns the
    names of the output (T, B, dirs * H_out), exactly 0 past each length, and of the final states like
    ``state``: what ``forward(x, hx, lengths=lengths)`` returns, in eval mode.
    """
    mode = _mode(layer)
    L, dirs, H = layer.num_layers, 2 if layer.bidirectional else 1, layer.hidden_size
    steps = Steps(g, lengths, x)
    if state is None:
        sizes = (layer.proj_size or H, H) if mode in ("LSTM", "LayerNormLSTM") else (H,)
        state = [steps.zeros(L * dirs, size) for size in sizes]
    scan = mode == "LayerNormLSTM" or layer.proj_size > 0
    finals = []
    for k in range(L):
        weights = [_parameters(layer, k, suffix) for suffix in ("", "_reverse")[:dirs]]
        layer_state = [g.op("Slice", s, g.ints(k * dirs), g.ints((k + 1) * dirs), g.ints(0)) for s in state]
        if scan:  # layer_state: each (dirs, B, ·)
            x, layer_finals = scan_layer(g, mode, x, steps, layer_state, weights, H)
        else:
            op, activation = _OPERATORS[mode]
            x, layer_finals = operator_layer(g, op, x, steps, layer_state, weights, H, activation)
        finals.append(layer_finals)  # x: (T, B, dirs * H_out)
    if not scan:  # ONNX leaves the operators' output past a length undefined (onnxruntime writes zeros)
        x = g.op("Where", steps.mask, x, g.const(0.0))
    return x, [g.op("Concat", *(f[i] for f in finals), axis=0) for i in range(len(state))]


def _mode(layer) -> str:
    """The layer's mode, after checking that :func:`export_onnx` can write it."""
    mode = getattr(layer, "mode", None)
    if mode not in (*_OPERATORS, "LayerNormLSTM") or not hasattr(layer, "weight_ih_l0"):
        raise TypeError(f"export_onnx takes an rnnkit LSTM, GRU, RNN or LayerNormLSTM, got {type(layer).__name__}")
    if layer.weight_ih_l0.dtype != torch.float32:
        raise ValueError(f"export_onnx writes float32 models: convert the layer with .float() first "
                         f"(its parameters are {layer.weight_ih_l0.dtype})")
    return mode


def _check_arguments(initial_state, opset) -> None:
    if not isinstance(initial_state, bool):
        raise TypeError(f"initial_state should be of type bool, got: {type(initial_state).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not DEFAULT_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int from {DEFAULT_OPSET} to {newest} (this onnx's newest), got {opset!r}")


def _parameters(layer, k: int, suffix: str) -> dict:
    """Layer ``k``'s parameters of one direction as float32 numpy arrays, by torch's name without ``_l{k}{suffix}``
    (``weight_ih``, ...; the ``ln_*`` of a LayerNorm-LSTM), those the layer has."""
    found = {}
    for name in (*_WEIGHTS, *_LAYER_NORMS):
        parameter = getattr(layer, f"{name}_l{k}{suffix}", None)
        if parameter is not None:
            found[name] = parameter.detach().cpu().numpy()
    return found
