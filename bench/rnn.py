"""Speed of rnnkit's recurrent layers against torch's, measured side by side in one run.

    python bench/rnn.py [--repeats N] [--only layernorm|backends|directions]

Runs on CPU in float32 with ``torch.set_num_threads(2)``. The layers compared in one table are
timed round-robin (one call of each, N times over) after a warm-up call, and each is reported by
its median, so that load from other processes falls on all of them alike. Before timing, every
rnnkit layer is checked to compute what its torch counterpart computes. Lengths, where used, are
uniform in [T/4, T]; padded ``nn.LSTM`` runs all T steps of every sequence, the packed one only the
real steps, rnnkit's native backend the real steps rounded up to a few time chunks. GFLOP/s count
the padded work, 2 * T * B * 4H * (D + H) per layer direction, whatever a layer skips.

Shapes: T time steps, B sequences, D input features, H hidden units.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
from timing import measure  # bench/timing.py (a script's own directory is on its import path)
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit import LayerNormLSTMCell, _equations, _gemm, _native
from rnnkit.layers import LSTM, LayerNormLSTM
from rnnkit.packing import Packing

THREADS = 2



def gemm_peak(n: int = 2048, repeats: int = 10, onednn: bool = False) -> float | None:
    """Best fp32 GFLOP/s of an (n x n) @ (n x n) matmul: the machine's practical peak.

    ``torch.mm`` runs the BLAS torch was built with (MKL in the PyPI CPU wheels), which is what
    rnnkit's per-step products call; with ``onednn`` the same product goes through oneDNN, the
    library behind torch's fused CPU LSTM, by the private op torch's compiler uses, as rnnkit's
    input projections do on non-Intel CPUs (``rnnkit._gemm``; None where this torch has no such op).
    On an AMD EPYC the two differed by 2x, which is the gap between the fused nn.LSTM and any
    recurrence written with ``torch.mm`` there. The fastest call, not the median: a peak is what the
    machine reaches when left alone.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    if onednn:
        linear = _gemm._onednn_linear()
        if linear is None:
            return None

        def product():
            return linear(a, b)  # a @ b^T
    else:
        def product():
            return torch.mm(a, b)
    product()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / min(seconds) / 1e9


def lstm_gflop(T, B, D, H, dirs=1) -> float:
    """Matrix-multiply work of one LSTM layer's forward pass over the padded batch, in GFLOP."""
    return 2 * T * B * 4 * H * (D + H) * dirs / 1e9


def random_lengths(B: int, T: int) -> torch.Tensor:
    return torch.randint(T // 4, T + 1, (B,))


def fwd_bwd(layer, x, **kwargs):
    """A call that runs ``layer`` forward and backward (gradients of the input and all weights)."""
    def call():
        output, _ = layer(x, **kwargs)
        output.sum().backward()
    return call


def fwd(layer, x, **kwargs):
    def call():
        with torch.no_grad():
            layer(x, **kwargs)
    return call


def one_chunk(call):
    """``call`` with the native backend held to one fused call per layer (no time chunks)."""
    def wrapped():
        saved, _native._MAX_CHUNKS = _native._MAX_CHUNKS, 1
        try:
            call()
        finally:
            _native._MAX_CHUNKS = saved
    return wrapped


def packed_fwd_bwd(layer, x, lengths):
    """``layer`` on a PackedSequence built (and unpacked) inside the timed call, as a user would."""
    def call():
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        output, _ = pad_packed_sequence(layer(packed)[0], total_length=x.shape[0])
        output.sum().backward()
    return call


def check_same(ours, reference, x, lengths):
    """Our layer with ``lengths`` must give what ``reference`` gives on the PackedSequence."""
    with torch.no_grad():
        out, _ = ours(x, lengths=lengths)
        ref, _ = reference(pack_padded_sequence(x, lengths, enforce_sorted=False))
        ref, _ = pad_packed_sequence(ref, total_length=x.shape[0])
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def print_table(title, seconds, baselines, notes=(), gflop=None):
    """Rows of milliseconds, then a "time / baseline's time" column per ``{column: baseline row}``."""
    print(f"\n{title}")
    header = f"  {'layer':36s}{'ms':>9s}" + "".join(f"{column:>12s}" for column in baselines)
    print(header + (f"{'GFLOP/s':>10s}" if gflop else ""))
    for name, s in seconds.items():
        row = f"  {name:36s}{s * 1e3:9.1f}" + "".join(f"{s / seconds[b]:12.2f}" for b in baselines.values())
        print(row + (f"{gflop / s:10.1f}" if gflop else ""))
    for note in notes:
        print(f"  {note}")


def bench_bidirectional_lstm(repeats):
    T, B, D, H = 100, 64, 256, 256
    torch.manual_seed(0)
    reference = nn.LSTM(D, H, num_layers=2, bidirectional=True)
    native = LSTM(D, H, num_layers=2, bidirectional=True, backend="native")
    equations = LSTM(D, H, num_layers=2, bidirectional=True, backend="equations")
    for layer in (native, equations):
        layer.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, D, requires_grad=True)
    lengths = random_lengths(B, T)
    for layer in (native, equations):
        check_same(layer, reference, x, lengths)
    seconds = measure({
        "rnnkit.LSTM native, lengths": fwd_bwd(native, x, lengths=lengths),
        "rnnkit.LSTM native, lengths, 1 chunk": one_chunk(fwd_bwd(native, x, lengths=lengths)),
        "rnnkit.LSTM equations, lengths": fwd_bwd(equations, x, lengths=lengths),
        "nn.LSTM, PackedSequence": packed_fwd_bwd(reference, x, lengths),
        "nn.LSTM, padded (ignores lengths)": fwd_bwd(reference, x),
    }, repeats)
    s, real = seconds, float(lengths.sum()) / (B * T)
    print_table(
        f"2-layer bidirectional LSTM, B={B} T={T} D=H={H}, lengths U[{T // 4},{T}] "
        f"(mean {lengths.float().mean():.1f}), forward+backward",
        seconds, {"/ packed": "nn.LSTM, PackedSequence", "/ padded": "nn.LSTM, padded (ignores lengths)"},
        notes=[
            f"native is {s['nn.LSTM, PackedSequence'] / s['rnnkit.LSTM native, lengths']:.2f}x faster than packed "
            "(target >= 2.5x)",
            f"equations is {s['nn.LSTM, PackedSequence'] / s['rnnkit.LSTM equations, lengths']:.2f}x faster than "
            "packed",
            f"native takes {s['rnnkit.LSTM native, lengths'] / s['nn.LSTM, padded (ignores lengths)']:.2f}x "
            "the time of padded nn.LSTM (target <= 1.1x)",
            f"time chunks take native from {s['rnnkit.LSTM native, lengths, 1 chunk'] * 1e3:.1f} ms (one call per "
            f"layer) to {s['rnnkit.LSTM native, lengths'] * 1e3:.1f} ms",
            f"the fused kernel on the real steps only, at its padded speed (padded x {real:.3f}, the real share of "
            f"the steps), would be {s['nn.LSTM, PackedSequence'] / (s['nn.LSTM, padded (ignores lengths)'] * real):.2f}x "
            "faster than packed: about the most the native backend, which runs that kernel, can reach",
        ],
    )


class CellLoop(nn.Module):
    """``rnnkit.LayerNormLSTMCell`` called once per time step: the natural "cell in a loop".

    Every step projects its own input inside the cell. The cell gets a copy of the first-layer
    parameters of a ``LayerNormLSTM``, so both compute the same function.
    """

    def __init__(self, layer: LayerNormLSTM):
        super().__init__()
        self.cell = LayerNormLSTMCell(layer.input_size, layer.hidden_size).to(layer.weight_ih_l0.dtype)
        self.cell.load_state_dict({name.removesuffix("_l0"): p for name, p in layer.state_dict().items()})

    def forward(self, x):
        state, outputs = None, []
        for x_t in x:  # (B, D)
            state = self.cell(x_t, state)
            outputs.append(state[0])
        return torch.stack(outputs), state  # (T, B, H)


class LoopLayerNormLSTM(nn.Module):
    """The LayerNorm-LSTM cell of Ba et al. (2016), sec. 3.1, as a plain autograd loop over time.

    The stronger loop baseline: the input projection for all steps is one matmul (hoisted out of
    the loop, as :class:`CellLoop` does not), then every step is ordinary differentiable torch ops.
    It borrows the parameters of a ``LayerNormLSTM`` so both compute the same function.
    """

    def __init__(self, layer: LayerNormLSTM):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        p, H = self.layer, self.layer.hidden_size
        ln = nn.functional.layer_norm
        xg = ln(x @ p.weight_ih_l0.T, (4 * H,), p.ln_ih_weight_l0, p.ln_ih_bias_l0)  # (T, B, 4H)
        xg = xg + p.bias_ih_l0 + p.bias_hh_l0
        h = c = x.new_zeros(x.shape[1], H)  # (B, H)
        outputs = []
        for xg_t in xg:
            gates = xg_t + ln(h @ p.weight_hh_l0.T, (4 * H,), p.ln_hh_weight_l0, p.ln_hh_bias_l0)  # (B, 4H)
            i, f, g, o = gates.chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(ln(c, (H,), p.ln_c_weight_l0, p.ln_c_bias_l0))
            outputs.append(h)
        return torch.stack(outputs), (h[None], c[None])


def lstm_products(x, w_ih, w_hh):
    """A call that runs only the matrix products of one LSTM layer's forward + backward over full-length ``x``
    (T, B, D), on the libraries rnnkit's equations backend uses: the input projection and its two gradients,
    and per step the recurrent product, its input gradient and the step's share of dW_hh. No layer can take
    less time than these, whatever it does around them: they bound every speed-up it can show."""
    T, B, D = x.shape
    G, H = w_hh.shape
    rows = x.detach().reshape(T * B, D)
    w_hh_t = w_hh.detach().T.contiguous()[None]  # (1, H, G)
    w_hh_b = w_hh.detach()[None]  # (1, G, H)
    h, d_gates, d_w_hh = x.new_zeros(1, B, H), x.new_zeros(1, B, G), x.new_zeros(1, G, H)

    def call():
        gates = _gemm._product(rows, w_ih.detach())  # (T*B, G)
        for _ in range(T):
            torch.bmm(h, w_hh_t)  # (1, B, G)
        for _ in range(T):
            torch.bmm(d_gates, w_hh_b)  # (1, B, H)
            d_w_hh.baddbmm_(d_gates.transpose(1, 2), h)
        _gemm._product(gates, w_ih.detach().T)  # dX (T*B, D)
        _gemm._product(gates.T, rows.T)  # dW_ih (G, D)
    return call


def bench_layernorm_lstm(repeats):
    T, B, D, H = 100, 32, 256, 256
    torch.manual_seed(0)
    ours = LayerNormLSTM(D, H, backend="equations")
    for name, p in ours.named_parameters():  # LayerNorm gains/biases away from 1/0 to test them
        if name.startswith("ln_"):
            nn.init.normal_(p, mean=1.0 if "weight" in name else 0.0, std=0.1)
    plain = nn.LSTM(D, H)
    x = torch.randn(T, B, D, requires_grad=True)
    with torch.no_grad():  # in float64, where 100 steps of rounding cannot hide a difference
        ours64 = copy.deepcopy(ours).double()
        x64 = x.double()
        out64 = ours64(x64)[0]
        for baseline in (LoopLayerNormLSTM(ours64), CellLoop(ours64)):
            torch.testing.assert_close(out64, baseline(x64)[0], atol=1e-10, rtol=1e-10)
    ours_name, cell_name, loop_name = "rnnkit.LayerNormLSTM equations", "LayerNormLSTMCell loop", "hoisted loop"
    seconds = measure({
        ours_name: fwd_bwd(ours, x),
        cell_name: fwd_bwd(CellLoop(ours), x),
        loop_name: fwd_bwd(LoopLayerNormLSTM(ours), x),
        "nn.LSTM (no LayerNorm)": fwd_bwd(plain, x),
        "its matrix products alone": lstm_products(x, ours.weight_ih_l0, ours.weight_hh_l0),
    }, repeats)
    s = seconds
    print_table(
        f"1-layer LayerNorm-LSTM, B={B} T={T} D=H={H}, full length, forward+backward",
        seconds, {"/ nn.LSTM": "nn.LSTM (no LayerNorm)", "/ cell loop": cell_name, "/ hoisted": loop_name},
        notes=[
            f"rnnkit takes {s[ours_name] / s['nn.LSTM (no LayerNorm)']:.2f}x the time of nn.LSTM (target <= 1.5x)",
            f"rnnkit is {s[cell_name] / s[ours_name]:.2f}x faster than the cell loop and "
            f"{s[loop_name] / s[ours_name]:.2f}x faster than the hoisted-projection loop (target >= 2x)",
            f"the matrix products alone are {s[cell_name] / s['its matrix products alone']:.2f}x faster than the "
            "cell loop: no layer doing them can be faster than that",
        ],
    )


def bench_forward(repeats, B, T, H, peak):
    D = H
    torch.manual_seed(0)
    reference = nn.LSTM(D, H)
    native = LSTM(D, H, backend="native")
    equations = LSTM(D, H, backend="equations")
    layernorm = LayerNormLSTM(D, H)
    for layer in (native, equations):
        layer.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, D)
    lengths = random_lengths(B, T)
    for layer in (native, equations):
        check_same(layer, reference, x, lengths)
    seconds = measure({
        "rnnkit.LSTM native, lengths": fwd(native, x, lengths=lengths),
        "rnnkit.LSTM equations, lengths": fwd(equations, x, lengths=lengths),
        "rnnkit.LayerNormLSTM, lengths": fwd(layernorm, x, lengths=lengths),
        "nn.LSTM, PackedSequence": fwd(reference, pack_padded_sequence(x, lengths, enforce_sorted=False)),
        "nn.LSTM, padded (ignores lengths)": fwd(reference, x),
    }, repeats)
    print_table(
        f"1-layer LSTM forward only, B={B} T={T} D=H={H}, lengths U[{T // 4},{T}]",
        seconds, {"/ padded": "nn.LSTM, padded (ignores lengths)"}, gflop=lstm_gflop(T, B, D, H),
        notes=[f"GFLOP/s: padded matrix-multiply work {lstm_gflop(T, B, D, H):.2f} GFLOP / time; "
               f"fp32 GEMM peak (torch.mm) {peak:.0f} GFLOP/s"],
    )


def bench_backends(repeats):
    """The two exact backends in training (forward + backward, lengths) over a few shapes: what "auto" should pick."""
    print("\nrnnkit.LSTM forward + backward with lengths U[T/4,T], D=H: native against equations")
    for B, T, H, layers, bidirectional in ((16, 200, 128, 1, False), (32, 50, 128, 1, True),
                                           (64, 100, 256, 2, True), (64, 100, 512, 1, False)):
        torch.manual_seed(0)
        native = LSTM(H, H, num_layers=layers, bidirectional=bidirectional, backend="native")
        equations = LSTM(H, H, num_layers=layers, bidirectional=bidirectional, backend="equations")
        equations.load_state_dict(native.state_dict())
        x = torch.randn(T, B, H, requires_grad=True)
        lengths = random_lengths(B, T)
        with torch.no_grad():
            torch.testing.assert_close(native(x, lengths=lengths)[0], equations(x, lengths=lengths)[0],
                                       atol=1e-4, rtol=1e-4)
        seconds = measure({"native": fwd_bwd(native, x, lengths=lengths),
                           "equations": fwd_bwd(equations, x, lengths=lengths)}, repeats)
        print(f"  B={B:3d} T={T:3d} H={H:3d} layers={layers} bidirectional={bidirectional!s:5s}  native "
              f"{seconds['native'] * 1e3:7.1f} ms  equations {seconds['equations'] * 1e3:7.1f} ms  "
              f"native / equations {seconds['native'] / seconds['equations']:.2f}")


def bench_directions(repeats):
    """The equations backend's bidirectional layer, both directions stepped in one loop (what it does)
    against one loop per direction (the same recurrence called once per direction), forward + backward."""
    print("\nBidirectional equations layer, forward + backward with lengths U[T/4,T] (U[1,T] for T=10): "
          "one loop per direction / both directions in one loop")
    for B, T, D, H, layers in ((16, 200, 128, 128, 1), (32, 50, 128, 128, 1), (64, 100, 256, 256, 2),
                               (138, 10, 384, 192, 1)):
        torch.manual_seed(0)
        lstm = LSTM(D, H, num_layers=layers, bidirectional=True, backend="equations")
        x = torch.randn(T, B, D, requires_grad=True)
        lengths = torch.randint(1, T + 1, (B,)) if T <= 10 else random_lengths(B, T)

        def one_loop_per_direction():
            packing = Packing(lengths, T, B)
            h = packing.pack(x)
            for layer in range(layers):
                forward, reverse = lstm.all_weights[2 * layer : 2 * layer + 2]
                out, _ = _equations.run_packed("LSTM", h, packing, None, [forward], has_biases=True)
                back, _ = _equations.run_packed("LSTM", packing.reverse(h), packing, None, [reverse], has_biases=True)
                h = torch.cat([out, packing.reverse(back)], -1)
            return packing.unpack(h)

        torch.testing.assert_close(one_loop_per_direction(), lstm(x, lengths=lengths)[0], atol=1e-5, rtol=1e-5)
        seconds = measure({"both": fwd_bwd(lstm, x, lengths=lengths),
                           "each": lambda: one_loop_per_direction().sum().backward()}, repeats)
        print(f"  B={B:3d} T={T:3d} D={D:3d} H={H:3d} layers={layers}  one loop per direction "
              f"{seconds['each'] * 1e3:7.1f} ms  one loop {seconds['both'] * 1e3:7.1f} ms  "
              f"ratio {seconds['each'] / seconds['both']:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per layer (default 7)")
    tables = {"layernorm": bench_layernorm_lstm, "backends": bench_backends, "directions": bench_directions}
    parser.add_argument("--only", choices=list(tables), help="run only this table")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    peak, onednn_peak = gemm_peak(), gemm_peak(onednn=True)
    print(f"torch {torch.__version__}, {platform.machine()} {_cpu_name()}, {THREADS} threads, float32; "
          f"median of {args.repeats} round-robin calls")
    print(f"fp32 GEMM peak (2048x2048): torch.mm {peak:.0f} GFLOP/s, oneDNN "
          + (f"{onednn_peak:.0f} GFLOP/s" if onednn_peak else "not available"))
    if args.only:
        tables[args.only](args.repeats)
        return
    bench_bidirectional_lstm(args.repeats)
    bench_layernorm_lstm(args.repeats)
    bench_forward(args.repeats, B=16, T=200, H=128, peak=peak)
    bench_forward(args.repeats, B=64, T=100, H=512, peak=peak)
    bench_backends(args.repeats)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
