"""Speaker-history fusion: one batched LSTM call against a Python loop over dialogues and speakers.

Both compute the same function (checked before timing): for every dialogue and every speaker in
it, an LSTM over that speaker's utterances, added back to them. Times forward + backward.

    OMP_NUM_THREADS=1 python bench/fusion.py
    python bench/fusion.py --dialogues 32 --utterances 10 --speakers 9 --dim 384 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from rnnkit.erc.fusion import SpeakerHistoryFusion


def make_batch(B: int, U: int, S: int, D: int, device: torch.device, seed: int = 0):
    """(B, U_max, D) utterances; lengths around U (U/2 .. 3U/2); 2..S speakers per dialogue."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, U // 2), U + U // 2 + 1, (B,), generator=g)  # (B,)
    per_dialogue = torch.randint(2, S + 1, (B, 1), generator=g)  # (B, 1)
    speakers = (torch.rand(B, int(lengths.max()), generator=g) * per_dialogue).long()  # (B, U_max)
    x = torch.randn(B, int(lengths.max()), D, generator=g)
    return x.to(device), speakers.to(device), lengths.to(device)


def loop_fusion(fusion: SpeakerHistoryFusion, rnn: nn.LSTM, x, speakers, lengths):
    """The definition, one dialogue and one speaker at a time, each speaker's turns through ``rnn``
    (a ``torch.nn.LSTM`` holding ``fusion.rnn``'s weights: torch's fused kernel, the fastest way to
    run one short sequence)."""
    rows = []
    for b in range(x.shape[0]):
        n = int(lengths[b])
        out = x[b].clone()
        for s in speakers[b, :n].unique():
            where = (speakers[b, :n] == s).nonzero().squeeze(1)
            history, _ = rnn(x[b, where][None])  # (1, turns, dirs*H)
            out[where] = x[b, where] + fusion.proj(history[0])
        rows.append(out)
    return torch.stack(rows)


def time_steps(fns, x, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of forward + backward of each of ``fns``, run in turn within every repeat so
    that a change in machine load hits all of them alike."""
    def step(fn) -> float:
        start = time.perf_counter()
        x.grad = None
        fn().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns:  # warm-up
        for _ in range(2):
            step(fn)
    times = [[step(fn) for fn in fns] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*times)]


# The ops that run the matrix products of a forward + backward (MKL's and oneDNN's)
_PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_",
                "mkldnn::_linear_pointwise")


def product_seconds(fn, x, repeats: int = 5) -> float:
    """Median over ``repeats`` profiled forward + backward calls of ``fn`` of the time its matrix products
    take (the profiler's self CPU time of :data:`_PRODUCT_OPS`): no implementation doing the same products
    can take less, which bounds the speed-up any of them can show against the loop."""
    seconds = []
    for _ in range(repeats):
        x.grad = None
        with torch.profiler.profile() as profile:
            fn().sum().backward()
        seconds.append(sum(e.self_cpu_time_total for e in profile.key_averages() if e.key in _PRODUCT_OPS) / 1e6)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=32)
    parser.add_argument("--utterances", type=int, default=10, help="mean utterances per dialogue")
    parser.add_argument("--speakers", type=int, default=9, help="most speakers in one dialogue")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=192, help="per direction; 2 * 192 = 384: no projection")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    fusion = SpeakerHistoryFusion(args.dim, args.hidden).to(device)
    rnn = nn.LSTM(args.dim, args.hidden, batch_first=True, bidirectional=True).to(device)
    rnn.load_state_dict(fusion.rnn.state_dict())
    x, speakers, lengths = make_batch(args.dialogues, args.utterances, args.speakers, args.dim, device)
    x.requires_grad_()
    with torch.no_grad():  # in float64, where float32's run-to-run rounding (up to 1.3e-5 here) cannot hide a bug
        x64, fusion64, rnn64 = x.double(), copy.deepcopy(fusion).double(), copy.deepcopy(rnn).double()
        torch.testing.assert_close(fusion64(x64, speakers, lengths), loop_fusion(fusion64, rnn64, x64, speakers, lengths),
                                   atol=1e-10, rtol=1e-10)

    batched, looped = time_steps([lambda: fusion(x, speakers, lengths), lambda: loop_fusion(fusion, rnn, x, speakers, lengths)],
                                 x, args.repeats, device)
    products = product_seconds(lambda: fusion(x, speakers, lengths), x)
    tracks = sum(len(speakers[b, : int(lengths[b])].unique()) for b in range(args.dialogues))
    print(f"device {device}, torch threads {torch.get_num_threads()}; {args.dialogues} dialogues, "
          f"{int(lengths.sum())} utterances, {tracks} (dialogue, speaker) tracks, D={args.dim}, H={args.hidden}x2")
    print(f"SpeakerHistoryFusion  forward+backward  {batched * 1e3:8.2f} ms")
    print(f"Python loop           forward+backward  {looped * 1e3:8.2f} ms")
    print(f"  its matrix products alone             {products * 1e3:8.2f} ms (profiler)")
    print(f"speed-up {looped / batched:.1f}x (the products alone: {looped / products:.1f}x, the most any "
          "implementation of them can reach)")


if __name__ == "__main__":
    main()
