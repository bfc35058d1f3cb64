"""A trained ERC run as one ONNX model, and its predictions in onnxruntime.

:func:`export_run` writes the model of a run directory as an ONNX graph of what :class:`ERCModel` computes in eval
mode (no dropout). For the ``words``/``chars`` encoders the graph starts from token ids: the embedding and the
encoder BiLSTM are in it, and the file alone labels text. For a transformer (frozen or fine-tuned) or a features
encoder the transformer is *not* in the graph: its utterance vectors are an input, made by the run's encoder.

Inputs (B dialogues, U utterances, W tokens, all dynamic; D utterance width)::

    tokens         (B, U, W) int64    token ids of the run's vocabulary, 0 = padding      words/chars
    token_lengths  (B, U) int64       tokens per utterance, 0 at padding utterances       words/chars
    utterances     (B, U, D) float32  the encoder's utterance vectors                     other encoders
    speakers       (B, U) int64       who speaks: any ids, compared within a dialogue
    lengths        (B,) int64         utterances per dialogue, each at least 1

Outputs: ``logits`` and ``probabilities`` (B, U, L), the classifier's output and its softmax (rows past a
dialogue's length mean nothing). The file's ``metadata_props`` hold ``labels`` (a JSON list: the columns of the
probabilities), ``encoder`` (the run's ``ERCConfig.encoder``) and, for the token encoders, ``vocab`` (a JSON list
of the tokens in id order) and ``max_tokens`` (JSON ``null`` or an int).

The speaker-history fusion (:mod:`rnnkit.erc.fusion`) runs in torch over packed tracks sorted on the host; ONNX
has no such loop, so the graph derives the tracks with tensor ops for any B, U and number of speakers. Comparing
each utterance's speaker with every other's in its dialogue gives a (B, U, U) table, and from it each utterance's
rank among its speaker's turns, its speaker's number of turns and whether it is that speaker's first turn. The
first turns, counted in row-major order (a CumSum), number the K tracks, one per (dialogue, speaker); the real
utterances are scattered to (rank, track) of a (T, K, D) tensor, T the most turns of any track, the LSTM runs
over it with each track's number of turns as its length (ONNX's ``LSTM`` with ``sequence_lens``: no turn reads
padding or another speaker's turn), and each utterance takes its output back from (rank, track). The table is
quadratic in U, within a dialogue only: a few thousand entries for a conversation.

:func:`load_onnx` loads an exported file in onnxruntime as an :class:`OnnxRun`, whose ``probabilities`` and
``predict`` are those of :class:`rnnkit.erc.Run`; :func:`predict_onnx_records` streams records as
:func:`rnnkit.erc.predict_records` does (what ``rnnkit predict --onnx`` writes). onnx and onnxruntime are the
optional ``onnx`` extra, imported on first use, so ``rnnkit.erc`` loads without them.

Shapes: B dialogues, U utterances (padded), W tokens (padded), D utterance width, H hidden, L labels, N = B * U
grid positions, n real utterances, K tracks, T the most turns of a track.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnkit.erc.encoders import TokenEncoder, UtteranceEncoder
from rnnkit.erc.model import DialogueBatch, ERCModel, collate_dialogues
from rnnkit.erc.records import Dialogue
from rnnkit.erc.runs import EVAL_BATCH_SIZE, Run, RunError, load_run, prediction_records
from rnnkit.vocab import Vocab

__all__ = ["export_run", "load_onnx", "OnnxRun", "predict_onnx_records", "ONNX_WINDOW"]

# Dialogues labeled per window by predict_onnx_records: memory holds one window, whatever the input's size.
ONNX_WINDOW = 512
_INT64 = 7  # onnx.TensorProto.INT64, for Cast (onnx itself is imported on first use)


def _import(name: str):
    """The module ``name`` (onnx, onnxruntime, rnnkit.export), or RunError saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise RunError(f'ONNX export and inference need onnx and onnxruntime ({err}): pip install "rnnkit[onnx]"') \
            from None


def export_run(run: Run | str | os.PathLike, path: str | os.PathLike | None = None) -> Any:
    """The model of ``run`` (a :class:`Run` or a run directory) as an ``onnx.ModelProto``, written to ``path``
    too unless it is None; inputs, outputs and metadata as in the module docstring."""
    onnx, export = _import("onnx"), _import("rnnkit.export")
    TensorProto, helper = onnx.TensorProto, onnx.helper

    if not isinstance(run, Run):
        run = load_run(run)
    model = run.model
    reads_tokens = isinstance(model.encoder, TokenEncoder)
    g = export.Graph()
    if reads_tokens:
        inputs = [("tokens", TensorProto.INT64, ["B", "U", "W"]), ("token_lengths", TensorProto.INT64, ["B", "U"])]
        x = _token_vectors(g, model.encoder, export)
    else:
        inputs = [("utterances", TensorProto.FLOAT, ["B", "U", model.encoder.output_size])]
        x = "utterances"
    inputs += [("speakers", TensorProto.INT64, ["B", "U"]), ("lengths", TensorProto.INT64, ["B"])]
    logits = _classify(g, model, x, export)
    g.op("Identity", logits, outputs=["logits"])
    g.op("Softmax", logits, outputs=["probabilities"], axis=-1)

    L = len(run.labels)
    graph = helper.make_graph(
        g.nodes, "ERCModel", [helper.make_tensor_value_info(*spec) for spec in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "U", L]) for name in ("logits", "probabilities")],
        g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", export.DEFAULT_OPSET)],
                              producer_name="rnnkit")
    metadata = {"labels": json.dumps(run.labels, ensure_ascii=False), "encoder": model.config.encoder}
    if reads_tokens:
        metadata |= {"vocab": json.dumps(model.encoder.vocab.tokens, ensure_ascii=False),
                     "max_tokens": json.dumps(model.encoder.max_tokens)}
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _weight(parameter: torch.Tensor) -> np.ndarray:
    return parameter.detach().cpu().float().numpy()


def _token_vectors(g, encoder: TokenEncoder, export) -> str:
    """The utterance vectors (B, U, 2H) of the ``tokens`` and ``token_lengths`` inputs: the embedding, then the
    BiLSTM's two final states, run (as in torch) on the n utterances with tokens only, not on the padding ones,
    which, like an utterance without tokens, get zeros."""
    lengths = g.op("Reshape", "token_lengths", g.ints(-1))  # (N,)
    where = g.op("Reshape", g.op("NonZero", lengths), g.ints(-1))  # (n,) utterances with tokens
    flat = g.op("Reshape", "tokens", g.op("Concat", g.ints(-1), g.op("Shape", "tokens", start=2), axis=0))  # (N, W)
    embedded = g.op("Gather", g.const(_weight(encoder.embedding.weight)), g.op("Gather", flat, where))  # (n, W, E)
    time_major = g.op("Transpose", embedded, perm=[1, 0, 2])  # (W, n, E)
    _, (h_n, _) = export.append_layer(g, encoder.rnn, time_major, g.op("Gather", lengths, where))  # (2, n, H)
    both = g.op("Reshape", g.op("Transpose", h_n, perm=[1, 0, 2]), g.ints(0, -1))  # (n, 2H): forward, backward
    zeros = g.op("Expand", g.const([0.0]), g.op("Concat", g.op("Shape", lengths), g.ints(encoder.output_size), axis=0))
    vectors = g.op("ScatterND", zeros, g.op("Unsqueeze", where, g.ints(1)), both)  # (N, 2H)
    grid = g.op("Concat", g.op("Shape", "tokens", end=2), g.ints(encoder.output_size), axis=0)
    return g.op("Reshape", vectors, grid)  # (B, U, 2H)


def _linear(g, layer: nn.Linear, x: str) -> str:
    return g.op("Add", g.op("MatMul", x, g.const(_weight(layer.weight).T)), g.const(_weight(layer.bias)))


def _classify(g, model: ERCModel, x: str, export) -> str:
    """Logits (B, U, L) from the utterance vectors ``x`` (B, U, D): :meth:`ERCModel.classify` in eval mode."""
    parts = [x if model.fusion is None else _fusion(g, model.fusion, x, export)]  # (B, U, D)
    if model.context is not None:
        time_major = g.op("Transpose", x, perm=[1, 0, 2])  # (U, B, D)
        context, _ = export.append_layer(g, model.context, time_major, "lengths")  # (U, B, 2H)
        parts.append(g.op("Transpose", context, perm=[1, 0, 2]))  # (B, U, 2H)
    fused = g.op("Concat", *parts, axis=-1) if len(parts) > 1 else parts[0]  # (B, U, F)
    return _linear(g, model.classifier, fused)  # (B, U, L)


def _fusion(g, fusion: nn.Module, x: str, export) -> str:
    """:class:`~rnnkit.erc.SpeakerHistoryFusion` of ``x`` (B, U, D) with the ``speakers`` and ``lengths`` inputs,
    its tracks built from the (B, U, U) speaker table (see the module docstring); padding returned unchanged."""
    U = g.op("Squeeze", g.op("Shape", x, start=1, end=2))  # a scalar
    u = g.op("Range", g.const(0, np.int64), U, g.const(1, np.int64))  # (U,)
    real = g.op("Less", g.op("Unsqueeze", u, g.ints(0)), g.op("Unsqueeze", "lengths", g.ints(1)))  # (B, U)
    both_real = g.op("And", g.op("Unsqueeze", real, g.ints(2)), g.op("Unsqueeze", real, g.ints(1)))  # (B, U, U)
    speaker_u, speaker_v = g.op("Unsqueeze", "speakers", g.ints(2)), g.op("Unsqueeze", "speakers", g.ints(1))
    same = g.op("And", g.op("Equal", speaker_u, speaker_v), both_real)  # (B, U, U): u, v real, with one speaker
    earlier = g.op("Less", g.op("Unsqueeze", u, g.ints(0)), g.op("Unsqueeze", u, g.ints(1)))  # (U, U): v < u

    def count(table: str) -> str:  # (B, U, U) bool -> (B, U) int64, the True entries of each row
        return g.op("ReduceSum", g.op("Cast", table, to=_INT64), g.ints(2), keepdims=0)

    rank, turns = count(g.op("And", same, earlier)), count(same)  # (B, U), (B, U); 0 at padding
    first = g.op("And", real, g.op("Equal", rank, g.const(0, np.int64)))  # (B, U) a speaker's first turn
    numbered = g.op("Sub", g.op("CumSum", g.op("Cast", g.op("Reshape", first, g.ints(-1)), to=_INT64), g.ints(0)),
                    g.const(1, np.int64))  # (N,) at each first turn, its track
    numbered = g.op("Reshape", numbered, g.op("Shape", real))  # (B, U)
    own_first = g.op("Cast", g.op("And", same, g.op("Unsqueeze", first, g.ints(1))), to=_INT64)  # (B, U, U)
    # [b, u, v] is 1 where v is the first turn of u's speaker: one v per real u, whose track is u's track
    track = g.op("ReduceSum", g.op("Mul", own_first, g.op("Unsqueeze", numbered, g.ints(1))), g.ints(2), keepdims=0)

    def flat(t: str) -> str:  # (B, U) -> (N,)
        return g.op("Reshape", t, g.ints(-1))

    def nonzero(mask: str) -> str:  # (B, U) bool -> (count,) flat positions of the True entries
        return g.op("Reshape", g.op("NonZero", flat(mask)), g.ints(-1))

    where, leaders = nonzero(real), nonzero(first)  # (n,), (K,)
    lengths = g.op("Gather", flat(turns), leaders)  # (K,) turns of each track
    at = g.op("Concat", *(g.op("Unsqueeze", g.op("Gather", flat(t), where), g.ints(1)) for t in (rank, track)),
              axis=1)  # (n, 2): (turn, track) of each real utterance
    grid = g.op("Reshape", x, g.ints(-1, fusion.input_size))  # (N, D)
    rows = g.op("Gather", grid, where)  # (n, D)
    shape = g.op("Concat", g.op("ReduceMax", lengths, keepdims=1), g.op("Shape", leaders),
                 g.ints(fusion.input_size), axis=0)
    tracks = g.op("ScatterND", g.op("Expand", g.const([0.0]), shape), at, rows)  # (T, K, D)
    history, _ = export.append_layer(g, fusion.rnn, tracks, lengths)  # (T, K, dirs * H)
    back = g.op("GatherND", history, at)  # (n, dirs * H)
    if isinstance(fusion.proj, nn.Linear):
        back = _linear(g, fusion.proj, back)  # (n, D)
    fused = g.op("ScatterND", grid, g.op("Unsqueeze", where, g.ints(1)), g.op("Add", rows, back))  # (N, D)
    return g.op("Reshape", fused, g.op("Shape", x))  # (B, U, D)


@dataclass
class OnnxRun:
    """An exported run in onnxruntime: ``labels`` (the columns of its probabilities), the ``encoder`` that turns
    dialogues into its inputs and the ``session`` that runs it. ``probabilities`` and ``predict`` are those of
    :class:`rnnkit.erc.Run`."""

    session: Any
    labels: list[str]
    encoder: UtteranceEncoder

    def probabilities(self, dialogues: Sequence[Dialogue]) -> list[torch.Tensor]:
        """One (len(dialogue), L) tensor of class probabilities per dialogue, columns in ``labels`` order."""
        dialogues = list(dialogues)
        self.encoder.prepare(dialogues)
        out = []
        for start in range(0, len(dialogues), EVAL_BATCH_SIZE):
            chunk = dialogues[start : start + EVAL_BATCH_SIZE]
            (probs,) = self.session.run(["probabilities"], self._feeds(collate_dialogues(chunk, self.encoder, None)))
            out.extend(torch.from_numpy(p[: len(d.utterances)]) for p, d in zip(probs, chunk))  # (U, L) each
        return out

    def predict(self, dialogues: Sequence[Dialogue]) -> list[list[str]]:
        """The most probable label of every utterance, one list per dialogue."""
        return [[self.labels[i] for i in p.argmax(-1).tolist()] for p in self.probabilities(dialogues)]

    @torch.no_grad()
    def _feeds(self, batch: DialogueBatch) -> dict[str, np.ndarray]:
        inputs = batch.inputs if isinstance(self.encoder, TokenEncoder) else {"utterances": self.encoder(batch.inputs)}
        inputs = {**inputs, "speakers": batch.speakers, "lengths": batch.lengths}  # batch.inputs stays as it is
        return {name: t.numpy() for name, t in inputs.items()}


def load_onnx(path: str | os.PathLike, run: Run | None = None) -> OnnxRun:
    """Load a file written by :func:`export_run`. A model that reads tokens needs nothing else (its vocabulary is
    in the file); one that reads utterance vectors needs ``run``, the run it was exported from (loaded with
    ``encoder="features:FILE"`` for a features run), whose encoder makes them. RunError naming the file otherwise.

    onnxruntime gets torch's number of threads (``OMP_NUM_THREADS``, ``torch.set_num_threads``), so that the two
    ways of predicting use the same cores.
    """
    onnxruntime = _import("onnxruntime")  # and not onnx: predicting needs the runtime alone
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: ONNX file not found")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for files it cannot read
        raise RunError(f"{path}: cannot load the ONNX model ({err})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    inputs = {i.name: i.shape for i in session.get_inputs()}
    if "labels" not in metadata or "speakers" not in inputs:
        raise RunError(f"{path}: not an ERC model written by 'rnnkit export' (no labels in its metadata)")
    labels = json.loads(metadata["labels"])
    if run is not None and run.labels != labels:
        raise RunError(f"{path}: its labels {', '.join(labels)} differ from those of the run "
                       f"({', '.join(run.labels)}); give the run it was exported from")
    if "tokens" in inputs:
        # Only the tokenisation and batching of this encoder run; the graph holds the weights.
        vocab = json.loads(metadata["vocab"])
        encoder = TokenEncoder(metadata["encoder"], Vocab(vocab[2:]), 1, 1, json.loads(metadata["max_tokens"]))
    elif run is None:
        raise RunError(f"{path} reads the utterance vectors of the {metadata['encoder']!r} encoder, which is not in "
                       "the graph: give the run it was exported from too (rnnkit predict --onnx FILE --run RUN_DIR)")
    elif run.model.encoder.output_size != inputs["utterances"][2]:
        raise RunError(f"{path} reads utterance vectors of width {inputs['utterances'][2]}, but the run's encoder "
                       f"makes them {run.model.encoder.output_size} wide; give the run it was exported from")
    else:
        encoder = run.model.encoder
    return OnnxRun(session, labels, encoder)


def predict_onnx_records(model: OnnxRun, dialogues: Iterable[Dialogue], *,
                         window: int | None = ONNX_WINDOW) -> Iterator[dict]:
    """The records of :func:`rnnkit.erc.predict_records` (dialogue id, index, speaker, text, predicted label,
    every label's probability, the gold label when there is one), from ``model``. ``dialogues`` are taken
    ``window`` at a time, so that memory holds one window; None takes them all at once, as a features encoder
    needs (its file holds rows for all of them)."""
    dialogues = iter(dialogues)
    while chunk := list(islice(dialogues, window)):
        yield from prediction_records(chunk, model.probabilities(chunk), model.labels)
