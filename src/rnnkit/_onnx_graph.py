"""The ONNX nodes of one recurrent layer, for :mod:`rnnkit.export`.

Two ways to build a layer: :func:`operator_layer` calls ONNX's own ``LSTM`` / ``GRU`` / ``RNN`` operator
with ``sequence_lens``; :func:`scan_layer` writes the gate equations of :mod:`rnnkit._steps` as the body
of a ``Scan`` over time, for the LSTM kinds that operator cannot express (layer norm inside the
recurrence, an output projection). Both take and give time-major tensors and the same states.

Shapes: T time steps, B batch, D input features, H hidden units, P = H_out (proj_size or H),
G = gates * H, dirs directions. Constants are numpy arrays in torch's layout; the ONNX layouts
are made here.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Graph", "Steps", "operator_layer", "scan_layer"]

_EPS = 1e-5  # the LayerNorm-LSTM's layer-norm epsilon, as in its cell


class Graph:
    """The nodes of one ONNX graph under construction, each output under a fresh name.

    A Scan body is a ``Graph(parent)``: it shares the parent's names (ONNX wants them unique across
    nested graphs) and puts its constants among the outermost graph's initializers, which a body
    may read as outer-scope values.
    """

    def __init__(self, parent: Graph | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._root = self if parent is None else parent._root
        self._count = itertools.count() if parent is None else parent._count

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._count)}"

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attributes) -> str | list[str]:
        """Add a node (``""`` for an optional input left out). ``outputs``: how many, under fresh names, or the
        names themselves; returns the name, or the list of names for more than one."""
        names = outputs if isinstance(outputs, list) else [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if len(names) == 1 else names

    def const(self, value, dtype=np.float32) -> str:
        name = self.fresh("const")
        self._root.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(values, np.int64)


class Steps:
    """The tensors the layers derive from ``lengths`` (B,) int64 and the time-major input ``x`` (T, B, D): the
    step mask and the lengths' other forms, each made on first use and shared by all layers; zero states."""

    def __init__(self, g: Graph, lengths: str, x: str) -> None:
        self.g, self.lengths, self.x = g, lengths, x

    @cached_property
    def mask(self) -> str:
        """(T, B, 1) bool: t < length, True at real steps."""
        g = self.g
        T = g.op("Shape", self.x, start=0, end=1)  # (1,)
        t = g.op("Range", g.ints(0), g.op("Squeeze", T), g.ints(1))  # (T,)
        real = g.op("Less", g.op("Unsqueeze", t, g.ints(1)), g.op("Unsqueeze", self.lengths, g.ints(0)))  # (T, B)
        return g.op("Unsqueeze", real, g.ints(2))

    @cached_property
    def int32(self) -> str:
        """The lengths as the int32 ``sequence_lens`` of ONNX's recurrent operators."""
        return self.g.op("Cast", self.lengths, to=TensorProto.INT32)

    @cached_property
    def empty(self) -> str:
        """(1, B, 1) bool: length 0."""
        return self.g.op("Unsqueeze", self.g.op("Equal", self.lengths, self.g.ints(0)), self.g.ints(0, 2))

    def zeros(self, rows: int, size: int) -> str:
        """A zero state (rows, B, size)."""
        g = self.g
        shape = g.op("Concat", g.ints(rows), g.op("Shape", self.x, start=1, end=2), g.ints(size), axis=0)
        return g.op("ConstantOfShape", shape, value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))

    def reverse(self, y: str) -> str:
        """Each sequence of ``y`` (T, B, ·) read backwards from its own last step; padding stays where it is."""
        return self.g.op("ReverseSequence", y, self.lengths, batch_axis=1, time_axis=0)


# torch's gate blocks in the order of ONNX's operator: LSTM i, f, g, o -> i, o, f, c; GRU r, z, n -> z, r, h
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}


def operator_layer(g: Graph, op: str, x: str, steps: Steps, state: list[str], weights: list[dict],
                   hidden_size: int, activation: str = "Tanh") -> tuple[str, list[str]]:
    """One layer as ONNX's ``op`` (``"LSTM"``, ``"GRU"`` or ``"RNN"``) over ``x`` (T, B, D).

    ``weights`` holds one dict per direction of torch's parameters (``weight_ih`` (G, D), ``weight_hh``
    (G, H), ``bias_ih``/``bias_hh`` (G,) if the layer has biases); ``state`` the initial ``[h0(, c0)]``,
    each (dirs, B, H). Returns the output (T, B, dirs * H), exactly 0 past each length only if the
    runtime writes zeros there (the caller masks it), and the final states like ``state``.
    """
    order, dirs = _GATE_ORDER[op], len(weights)

    def onnx_gates(w: np.ndarray) -> np.ndarray:
        blocks = np.split(w, len(order))
        return np.concatenate([blocks[i] for i in order])

    W = g.const(np.stack([onnx_gates(w["weight_ih"]) for w in weights]))  # (dirs, G, D)
    R = g.const(np.stack([onnx_gates(w["weight_hh"]) for w in weights]))  # (dirs, G, H)
    B = g.const(np.stack([np.concatenate([onnx_gates(w["bias_ih"]), onnx_gates(w["bias_hh"])])
                          for w in weights])) if "bias_ih" in weights[0] else ""  # (dirs, 2G)
    attributes = {"hidden_size": hidden_size, "direction": "bidirectional" if dirs == 2 else "forward"}
    if op == "GRU":
        attributes["linear_before_reset"] = 1  # torch's n = tanh(x_n + r * (W_hn h + b_hn))
    if op == "RNN":
        attributes["activations"] = [activation] * dirs
    Y, *finals = g.op(op, x, W, R, B, steps.int32, *state, outputs=1 + len(state), **attributes)
    # ONNX does not say what a length-0 sequence's final state is (onnxruntime gives zeros): its initial state
    finals = [g.op("Where", steps.empty, s0, s) for s0, s in zip(state, finals)]
    y = g.op("Transpose", Y, perm=[0, 2, 1, 3])  # (T, dirs, B, H) -> (T, B, dirs, H)
    return g.op("Reshape", y, g.ints(0, 0, -1)), finals  # (T, B, dirs * H)


def _layer_norm(g: Graph, a: str, weight: np.ndarray, bias: np.ndarray | None) -> str:
    """LN over the last dimension of ``a`` (..., dirs, B, K) with one gain ``weight`` (dirs, K) and shift
    ``bias`` per direction (which LayerNormalization's single scale cannot hold, hence the Mul and Add)."""
    normed = g.op("LayerNormalization", a, g.const(np.ones(weight.shape[-1])), axis=-1, epsilon=_EPS)
    out = g.op("Mul", normed, g.const(weight[:, None]))  # gain (dirs, 1, K)
    return out if bias is None else g.op("Add", out, g.const(bias[:, None]))


def _stack(weights: list[dict], name: str) -> np.ndarray:
    """One parameter of each direction -> (dirs, ...)."""
    return np.stack([w[name] for w in weights])


def _transposed(g: Graph, weights: list[dict], name: str) -> str:
    """A weight (out, in) of each direction as the right operand of MatMul, (dirs, in, out)."""
    return g.const(_stack(weights, name).transpose(0, 2, 1))


def scan_layer(g: Graph, mode: str, x: str, steps: Steps, state: list[str], weights: list[dict],
               hidden_size: int) -> tuple[str, list[str]]:
    """One LSTM-kind layer (``mode`` ``"LSTM"``, with or without ``weight_hr``, or ``"LayerNormLSTM"``) as a
    ``Scan`` of its step equations over ``x`` (T, B, D), both directions in one Scan.

    ``weights`` holds one dict per direction of torch's parameter names without the layer suffix;
    ``state`` is ``[h0, c0]``, (dirs, B, P) and (dirs, B, H). The reverse direction runs on each
    sequence reversed within its length, so it starts at the sequence's own end. Returns the output
    (T, B, dirs * P), 0 past each length, and ``[h_n, c_n]`` like ``state``.
    """
    xs = g.op("Unsqueeze", x, g.ints(1))  # (T, 1, B, D)
    if len(weights) == 2:
        xs = g.op("Concat", xs, g.op("Unsqueeze", steps.reverse(x), g.ints(1)), axis=1)  # (T, 2, B, D)
    xg = g.op("MatMul", xs, _transposed(g, weights, "weight_ih"))  # (T, dirs, B, G)
    biases = _stack(weights, "bias_ih") + _stack(weights, "bias_hh") if "bias_ih" in weights[0] else None  # (dirs, G)
    if mode == "LayerNormLSTM":
        # every constant term of the gates, LN_hh's shift included, goes into LN_ih's shift, as in the layer
        shift = _stack(weights, "ln_ih_bias") + _stack(weights, "ln_hh_bias") + (0 if biases is None else biases)
        xg = _layer_norm(g, xg, _stack(weights, "ln_ih_weight"), shift)
    elif biases is not None:
        xg = g.op("Add", xg, g.const(biases[:, None]))

    step = _step(g, mode, weights, hidden_size)
    h_n, c_n, y = g.op("Scan", *state, xg, steps.mask, outputs=3, body=step, num_scan_inputs=2)  # y (T, dirs, B, P)
    if len(weights) == 1:
        return g.op("Squeeze", y, g.ints(1)), [h_n, c_n]
    forward, backward = (g.op("Squeeze", half, g.ints(1)) for half in g.op("Split", y, g.ints(1, 1), axis=1, outputs=2))
    return g.op("Concat", forward, steps.reverse(backward), axis=-1), [h_n, c_n]  # (T, B, 2P)


def _step(parent: Graph, mode: str, weights: list[dict], H: int) -> onnx.GraphProto:
    """The Scan body: one step of every direction, :func:`rnnkit._steps.lstm_step` or
    :func:`~rnnkit._steps.layernorm_lstm_step` given the step's input projection ``xg_t`` (dirs, B, 4H),
    from ``h`` (dirs, B, P), ``c`` (dirs, B, H) to ``h'``, ``c'`` and the step's output ``y_t`` (dirs, B, P).
    Where ``real`` (B, 1) is False (a padding step) the state is kept and the output is 0."""
    g = Graph(parent)
    h, c, xg_t, real = (g.fresh(name) for name in ("h", "c", "xg_t", "real"))
    recurrent = g.op("MatMul", h, _transposed(g, weights, "weight_hh"))  # (dirs, B, 4H)
    if mode == "LayerNormLSTM":
        recurrent = _layer_norm(g, recurrent, _stack(weights, "ln_hh_weight"), None)
    i, f, gg, o = g.op("Split", g.op("Add", xg_t, recurrent), g.ints(H, H, H, H), axis=-1, outputs=4)
    c_new = g.op("Add", g.op("Mul", g.op("Sigmoid", f), c), g.op("Mul", g.op("Sigmoid", i), g.op("Tanh", gg)))
    if mode == "LayerNormLSTM":
        c_normed = _layer_norm(g, c_new, _stack(weights, "ln_c_weight"), _stack(weights, "ln_c_bias"))
        h_new = g.op("Mul", g.op("Sigmoid", o), g.op("Tanh", c_normed))  # (dirs, B, H)
    else:
        h_new = g.op("Mul", g.op("Sigmoid", o), g.op("Tanh", c_new))
        if "weight_hr" in weights[0]:
            h_new = g.op("MatMul", h_new, _transposed(g, weights, "weight_hr"))  # (dirs, B, P)
    outputs = [g.op("Where", real, h_new, h), g.op("Where", real, c_new, c), g.op("Where", real, h_new, g.const(0.0))]

    dirs, P = len(weights), weights[0]["weight_hh"].shape[1]  # weight_hh: (4H, P)
    shapes = {h: [dirs, "B", P], c: [dirs, "B", H], xg_t: [dirs, "B", 4 * H], real: ["B", 1]}
    shapes |= dict(zip(outputs, (shapes[h], shapes[c], shapes[h])))

    def info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.BOOL if name == real else TensorProto.FLOAT, shapes[name])

    return helper.make_graph(g.nodes, "step", [info(name) for name in (h, c, xg_t, real)], [info(n) for n in outputs])
