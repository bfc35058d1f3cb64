"""rnnkit.export: the exported ONNX model, run by onnxruntime, against the layer it came from.

Every kind, direction, depth and layout, with and without an initial state, on ragged batches with a
length-0 and a full-length sequence, each model run at two (B, T) shapes; and the operators the
module docstring promises.
"""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from functools import partial

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import rnnkit
import rnnkit.export
from rnnkit.export import DEFAULT_OPSET, export_onnx

# torch's fused kernel says so for every LSTM with proj_size; nothing to do with the export
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

D, H, P = 5, 6, 3  # input features, hidden units, proj_size
SHAPES = [(5, 7), (2, 3)]  # (B, T): one model, two shapes
TOL = {"rtol": 1e-5, "atol": 1e-5}
LAYERS = {
    "LSTM": rnnkit.LSTM,
    "LSTM-proj": partial(rnnkit.LSTM, proj_size=P),
    "GRU": rnnkit.GRU,
    "RNN-tanh": partial(rnnkit.RNN, nonlinearity="tanh"),
    "RNN-relu": partial(rnnkit.RNN, nonlinearity="relu"),
    "LayerNormLSTM": rnnkit.LayerNormLSTM,
}
# kind -> the operator it is exported with, one per layer
OPERATORS = {"LSTM": "LSTM", "LSTM-proj": "Scan", "GRU": "GRU", "RNN-tanh": "RNN", "RNN-relu": "RNN",
             "LayerNormLSTM": "Scan"}


def _layer(kind, **kwargs):
    """An eval-mode layer whose parameters are all off their initial values (the layer norms' 1 and 0 too)."""
    layer = LAYERS[kind](D, H, **kwargs).eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return layer


def _lengths(B, T):
    """Random lengths in [0, T], the first 0 and the second T."""
    lengths = torch.randint(0, T + 1, (B,))
    lengths[0], lengths[1] = 0, T
    return lengths


def _initial_state(layer, B):
    """Random ``(h0,)`` or ``(h0, c0)``, each (L * dirs, B, ·)."""
    num = layer.num_layers * (2 if layer.bidirectional else 1)
    sizes = [layer.proj_size or layer.hidden_size] + ([layer.hidden_size] if _has_cell(layer) else [])
    return tuple(torch.randn(num, B, size) for size in sizes)


def _has_cell(layer):
    return layer.mode in ("LSTM", "LayerNormLSTM")


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _compare(layer, session, B, T, initial_state):
    """onnxruntime's output and final states against the layer's on one random ragged batch."""
    x = torch.randn(B, T, D) if layer.batch_first else torch.randn(T, B, D)
    lengths = _lengths(B, T)
    state = _initial_state(layer, B) if initial_state else None
    with torch.no_grad():
        output, finals = layer(x, state if state is None or _has_cell(layer) else state[0], lengths=lengths)
    finals = finals if isinstance(finals, tuple) else (finals,)
    feeds = {"input": x.numpy(), "lengths": lengths.numpy()}
    if state is not None:
        feeds |= {name: s.numpy() for name, s in zip(("h0", "c0"), state)}
    got = session.run(None, feeds)
    assert [name.name for name in session.get_outputs()] == ["output", "h_n", "c_n"][: 1 + len(finals)]
    for actual, expected in zip(got, (output, *finals)):
        torch.testing.assert_close(torch.from_numpy(actual), expected, **TOL)
    assert not (got[0][0] if layer.batch_first else got[0][:, 0]).any()  # length 0: all zeros


@pytest.mark.parametrize("initial_state", [False, True], ids=["zeros", "h0"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_onnxruntime_matches_the_layer(kind, num_layers, bidirectional, batch_first, initial_state, tmp_path):
    layer = _layer(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    path = tmp_path / "layer.onnx"
    export_onnx(layer, path, initial_state=initial_state)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B, T in SHAPES:
        _compare(layer, session, B, T, initial_state)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_the_promised_operator_once_per_layer(kind):
    model = export_onnx(_layer(kind, num_layers=2, bidirectional=True), None)
    op_types = [node.op_type for node in model.graph.node]
    assert op_types.count(OPERATORS[kind]) == 2
    assert not ({"LSTM", "GRU", "RNN", "Scan"} - {OPERATORS[kind]}) & set(op_types)


@pytest.mark.parametrize("batch_first", [False, True])
def test_batch_and_time_axes_are_dynamic(batch_first):
    model = export_onnx(_layer("LSTM", batch_first=batch_first), None, initial_state=True)
    dims = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*model.graph.input, *model.graph.output)}
    time_and_batch = ["B", "T"] if batch_first else ["T", "B"]
    assert dims == {"input": [*time_and_batch, D], "lengths": ["B"], "h0": [1, "B", H], "c0": [1, "B", H],
                    "output": [*time_and_batch, H], "h_n": [1, "B", H], "c_n": [1, "B", H]}


def test_all_lengths_zero_and_all_full():
    layer = _layer("LayerNormLSTM", bidirectional=True)
    session = _session(export_onnx(layer, None, initial_state=True))
    x, state = torch.randn(4, 3, D), _initial_state(layer, 3)
    for lengths in (torch.zeros(3, dtype=torch.int64), torch.full((3,), 4)):
        with torch.no_grad():
            output, finals = layer(x, state, lengths=lengths)
        got = session.run(None, {"input": x.numpy(), "lengths": lengths.numpy(), "h0": state[0].numpy(),
                                 "c0": state[1].numpy()})
        for actual, expected in zip(got, (output, *finals)):
            torch.testing.assert_close(torch.from_numpy(actual), expected, **TOL)


def test_torch_modules_export_too():
    """torch's LSTM has the same parameters, so its export runs it on lengths, as a PackedSequence would."""
    lstm = nn.LSTM(D, H, num_layers=2, bidirectional=True).eval()
    x, lengths = torch.randn(6, 4, D), torch.tensor([6, 2, 1, 4])
    with torch.no_grad():
        packed, (h_n, c_n) = lstm(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
    output, _ = nn.utils.rnn.pad_packed_sequence(packed, total_length=6)
    got = _session(export_onnx(lstm, None)).run(None, {"input": x.numpy(), "lengths": lengths.numpy()})
    for actual, expected in zip(got, (output, h_n, c_n)):
        torch.testing.assert_close(torch.from_numpy(actual), expected, **TOL)


def test_docstring_examples():
    result = doctest.testmod(rnnkit.export)
    assert result.attempted and not result.failed


def test_the_file_is_the_returned_model(tmp_path):
    model = export_onnx(_layer("GRU"), tmp_path / "gru.onnx", opset=DEFAULT_OPSET + 1)
    loaded = onnx.load(tmp_path / "gru.onnx")
    assert loaded.SerializeToString() == model.SerializeToString()
    assert loaded.opset_import[0].version == DEFAULT_OPSET + 1


@pytest.mark.parametrize(("layer", "kwargs", "error", "match"), [
    (nn.Linear(2, 3), {}, TypeError, "takes an rnnkit LSTM, GRU, RNN or LayerNormLSTM, got Linear"),
    (rnnkit.GRU(2, 3).double(), {}, ValueError, r"float32 models: convert the layer with \.float\(\)"),
    (rnnkit.GRU(2, 3), {"opset": 13}, ValueError, "opset must be an int from 17"),
    (rnnkit.GRU(2, 3), {"initial_state": 1}, TypeError, "initial_state should be of type bool"),
])
def test_bad_arguments(layer, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_onnx(layer, None, **kwargs)


def test_without_onnx_an_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    monkeypatch.delitem(sys.modules, "rnnkit.export")
    with pytest.raises(ImportError, match=r'pip install "rnnkit\[onnx\]"'):
        importlib.import_module("rnnkit.export")


def test_importing_rnnkit_does_not_import_onnx():
    code = "import sys, rnnkit; print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize("kind", ["GRU", "LayerNormLSTM"])
def test_what_the_padding_holds_does_not_matter(kind):
    """Padding steps of NaN reach neither the output (exactly 0 there) nor the final states."""
    layer = _layer(kind, bidirectional=True)
    x, lengths = torch.randn(5, 3, D), torch.tensor([2, 5, 0])
    x[2:, 0] = float("nan")
    x[:, 2] = float("nan")
    got = _session(export_onnx(layer, None)).run(None, {"input": x.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        output, finals = layer(x.nan_to_num(), lengths=lengths)
    for actual, expected in zip(got, (output, *(finals if _has_cell(layer) else (finals,)))):
        torch.testing.assert_close(torch.from_numpy(actual), expected, **TOL)
