"""Training throughput: charloom against the notebooks' method, and against this machine's matmul peak.

    python bench/train_speed_bench.py [--repeats 3]

The notebooks' method, re-implemented here from their description: the corpus is a list of texts
(Shakespeare cut into 240-character pieces, about an AG News item each); each text becomes one batch of
all its len-100 windows, built by a Python loop that encodes every window; a one-hot LSTM(64) with a
linear head; Adam. charloom runs the same model (and 2x512 LSTM, GRU and RNN with 512-wide embeddings) on
vectorised random windows, batch 64 x 100. "Corpus characters per second" counts each character of the
corpus once (the notebooks' method trains on ~100 overlapping windows per character); "positions per
second" counts every predicted position. Effective GFLOP/s = 3 x forward FLOPs per position x positions/s
(forward, and backward at twice the forward), against `torch.mm` on 2048 x 2048 in the same precision,
measured in the same run. For the notebooks' model, a bound row times nn.LSTM's forward and backward alone
on the same batch: how far charloom's loop is from its kernel, and the most any loop on that kernel could reach.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook  # noqa: E402
import report  # noqa: E402

import charloom  # noqa: E402
from charloom import CorpusConfig, ModelConfig, load_corpus, runtime  # noqa: E402
from charloom.model import forward_flops  # noqa: E402

NCHARS = notebook.NCHARS


def notebook_rate(texts: list[str], vocab, seconds: float) -> tuple[float, float]:
    """The notebooks' training loop; returns (corpus characters/s, positions/s)."""
    torch.manual_seed(0)
    net = notebook.LSTMGenerator(len(vocab), 64)
    optimizer = torch.optim.Adam(net.parameters(), 0.01)
    chars = positions = 0
    t0 = time.perf_counter()
    for text in texts:
        c, p = notebook.train_step(net, optimizer, text, vocab)
        chars, positions = chars + c, positions + p
        if time.perf_counter() - t0 > seconds:
            break
    dt = time.perf_counter() - t0
    return chars / dt, positions / dt


def charloom_rate(shape: dict, steps: int, threads: int, precision: str) -> float:
    """Positions (= corpus characters: windows do not overlap) per second of charloom's own training loop
    (`charloom.train`: batching, schedule, autocast, clipping, AdamW), timed between step callbacks after
    two warm-up steps; no validation split and no n-gram, so nothing but training steps falls in the timed span."""
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        charloom.train(source="shakespeare", batch_size=64, seq_len=NCHARS, val_fraction=0.0, max_steps=steps + 2,
                       eval_every=0, sample_length=0, progress=False, lr=2e-3, warmup=0, threads=threads, ngram=0,
                       precision=precision, out=tmp, seed=0, early_pieces=1, late_pieces=1,  # one update a batch, as timed
                       callback=lambda e: times.append(time.perf_counter()) if e["event"] == "step" else None,
                       **shape)
    return 64 * NCHARS * (len(times) - 2) / (times[-1] - times[1])


def kernel_rate(cfg: ModelConfig, threads: int, precision: str, seconds: float = 2.0) -> float:
    """Positions per second of the recurrent kernel alone (nn.LSTM forward and backward on a 64 x 100 batch
    of the model's inputs, no head, loss or optimizer): no training loop on this kernel can beat it."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = charloom.CharRNN(cfg)
    x = model.inputs(torch.randint(0, cfg.vocab_size, (64, NCHARS))).detach()  # (B, T, E)
    device = torch.device("cpu")

    def step() -> None:
        with runtime.autocast(device, precision):
            out, _ = model.rnn(x)  # (B, T, H)
        out.float().sum().backward()

    step()
    return 64 * NCHARS * report.calls_per_second(step, seconds, min_calls=3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    corpus = load_corpus(CorpusConfig(source="shakespeare"))
    vocab = corpus.vocab
    text = vocab.decode(corpus.ids[:2_000_000])
    texts = notebook.texts_of(text)
    V = len(vocab)
    # the recurrent networks alone, as the notebooks build theirs: a linear head and no attention head (today's
    # defaults add both, which would time another model than the notebooks' under its name)
    alone = dict(head_hidden=0, attention=0)
    shapes = {
        "notebooks' model: LSTM(64), one-hot": dict(cell="lstm", num_layers=1, hidden_size=64, embedding=0, **alone),
        **{f"2x512 {c.upper()}, embedding 512, linear head": dict(cell=c, num_layers=2, hidden_size=512,
                                                                  embedding=512, **alone)
           for c in ("lstm", "gru", "rnn")},
    }
    # bf16 rows where this CPU has a bf16 kernel for every cell timed (the runtime's probe says so)
    precisions = ["fp32"] + (["bf16"] if all(runtime.probe("cpu", s["cell"], "bf16").runs
                                             for s in shapes.values()) else [])
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peaks = {p: report.product_rate(2048, 2048, 2048, args.repeats, dtype=runtime.PRECISIONS[p]) for p in precisions}
        nb = [notebook_rate(texts, vocab, 6.0) for _ in range(args.repeats)]
        nb_chars = [c for c, _ in nb]
        nb_pos = [p for _, p in nb]
        tiny = ModelConfig(**shapes[next(iter(shapes))], vocab_size=V)
        rows.append(report.row(threads, "notebooks' method: LSTM(64), one-hot, all windows of each text", "fp32",
                               report.spread(nb_chars, "{:,.0f}"), report.spread(nb_pos, "{:,.0f}"),
                               f"{statistics.median(nb_pos) * 3 * forward_flops(tiny) / 1e9:.1f}", ""))
        for name, shape in shapes.items():
            cfg = ModelConfig(**shape, vocab_size=V)
            steps = 40 if cfg.hidden_size < 100 else 6
            for precision in precisions:
                r = [charloom_rate(shape, steps, threads, precision) for _ in range(args.repeats)]
                gflops = statistics.median(r) * 3 * forward_flops(cfg) / 1e9
                ratio = ""
                if cfg.hidden_size < 100:
                    ratio = f"{statistics.median(r) / statistics.median(nb_chars):.0f}x the notebooks' corpus rate"
                rows.append(report.row(threads, f"charloom: {name}", precision, report.spread(r, "{:,.0f}"),
                                       report.spread(r, "{:,.0f}"),
                                       f"{gflops:.1f} ({gflops / peaks[precision]:.0%} of {precision} peak)", ratio))
                print(rows[-1], flush=True)
                if cfg.hidden_size < 100:  # how far the loop is from its kernel, and what the kernel allows
                    k = [kernel_rate(cfg, threads, precision) for _ in range(args.repeats)]
                    kg = statistics.median(k) * 3 * forward_flops(cfg, head=False) / 1e9
                    rows.append(report.row(
                        threads, "bound: the same model's nn.LSTM forward and backward alone (no head, loss or "
                        "optimizer)", precision, "", report.spread(k, "{:,.0f}"),
                        f"{kg:.1f} ({kg / peaks[precision]:.0%} of {precision} peak)",
                        f"{statistics.median(k) / statistics.median(nb_chars):.0f}x; charloom's loop runs at "
                        f"{statistics.median(r) / statistics.median(k):.0%} of it"))
                    print(rows[-1], flush=True)
        for p, peak in peaks.items():
            rows.append(report.row(threads, f"`torch.mm` 2048 x 2048 (the {p} peak)", p, "", "", f"{peak:.1f}", ""))
    body = "\n".join([
        "## Training throughput",
        "",
        f"Command: `python bench/train_speed_bench.py --repeats {args.repeats}`.",
        f"Machine: {report.machine()}.",
        "Median (min-max) over the repeats. charloom rows: its training loop on batch 64 x 100 random windows, "
        "AdamW, clip 1, in fp32 and (where the runtime's probe finds a bf16 kernel) bf16 autocast, which `--precision auto` picks where it is also faster. "
        "Bound rows time the notebooks' model's nn.LSTM forward and backward alone on the same batch: no training "
        "loop on that kernel can pass them. "
        "See the script's docstring for the notebooks' method as re-implemented, and for how FLOPs are counted.",
        "",
        *report.table(["threads", "what", "precision", "corpus characters/s", "positions/s", "effective GFLOP/s",
                       "vs notebooks"], rows),
    ])
    report.write_section("train-speed", body)
    print(body)


if __name__ == "__main__":
    main()
