"""Training throughput: charloom against the notebooks' method, and against this machine's matmul peak.

    python bench/train_speed_bench.py [--repeats 3]

The notebooks' method, re-implemented here from their description: the corpus is a list of texts
(Shakespeare cut into 240-character pieces, about an AG News item each); each text becomes one batch of
all its len-100 windows, built by a Python loop that encodes every window; a one-hot LSTM(64) with a
linear head; Adam. charloom runs the same model (and 2x512 LSTM, GRU and RNN with 512-wide embeddings) on
vectorised random windows, batch 64 x 100. "Corpus characters per second" counts each character of the
corpus once (the notebooks' method trains on ~100 overlapping windows per character); "positions per
second" counts every predicted position. Effective GFLOP/s = 3 x forward FLOPs per position x positions/s
(forward, and backward at twice the forward), against `torch.mm` on 2048 x 2048 measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook  # noqa: E402
import report  # noqa: E402

from charloom import BatchConfig, CharRNN, CorpusConfig, ModelConfig, load_corpus, prepare  # noqa: E402

NCHARS = notebook.NCHARS
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def forward_flops(cfg: ModelConfig) -> float:
    """Multiply-adds x 2 per position of the forward pass (recurrent layers and head; the one-hot input
    of a one-hot model is counted as a full product, as nn.LSTM computes it)."""
    g, H, V = GATES[cfg.cell], cfg.hidden_size, cfg.vocab_size
    E = cfg.embedding or V
    return 2 * sum(g * H * ((E if i == 0 else H) + H) for i in range(cfg.num_layers)) + 2 * H * V


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


def charloom_rate(data, cfg: ModelConfig, steps: int) -> float:
    """Positions (= corpus characters: windows do not overlap) per second of charloom's training step."""
    torch.manual_seed(0)
    model = CharRNN(cfg)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    it = iter(data.train)

    def step():
        b = next(it)
        logits, _ = model(b.x)
        loss = F.cross_entropy(logits.flatten(0, 1), b.y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return b.x.numel()

    step(), step()
    t0 = time.perf_counter()
    n = sum(step() for _ in range(steps))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    corpus = load_corpus(CorpusConfig(source="shakespeare"))
    vocab = corpus.vocab
    data = prepare(corpus, BatchConfig(batch_size=64, seq_len=NCHARS))
    text = vocab.decode(corpus.ids[:2_000_000])
    texts = notebook.texts_of(text)
    V = len(vocab)
    shapes = {
        "notebooks' model: LSTM(64), one-hot": ModelConfig(cell="lstm", num_layers=1, hidden_size=64, embedding=0,
                                                           vocab_size=V),
        **{f"2x512 {c.upper()}, embedding 512": ModelConfig(cell=c, num_layers=2, hidden_size=512, embedding=512,
                                                            vocab_size=V) for c in ("lstm", "gru", "rnn")},
    }
    rows, speedups = [], []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peak = report.product_rate(2048, 2048, 2048, args.repeats)
        nb = [notebook_rate(texts, vocab, 6.0) for _ in range(args.repeats)]
        nb_chars = [c for c, _ in nb]
        nb_pos = [p for _, p in nb]
        rows.append(f"| {threads} | notebooks' method: LSTM(64), one-hot, all windows of each text | "
                    f"{report.spread(nb_chars, '{:,.0f}')} | {report.spread(nb_pos, '{:,.0f}')} | "
                    f"{statistics.median(nb_pos) * 3 * forward_flops(shapes[next(iter(shapes))]) / 1e9:.1f} | |")
        for name, cfg in shapes.items():
            steps = 40 if cfg.hidden_size < 100 else 6
            r = [charloom_rate(data, cfg, steps) for _ in range(args.repeats)]
            gflops = statistics.median(r) * 3 * forward_flops(cfg) / 1e9
            ratio = ""
            if cfg.hidden_size < 100:
                ratio = f"{statistics.median(r) / statistics.median(nb_chars):.0f}x the notebooks' corpus rate"
                speedups.append(ratio)
            rows.append(f"| {threads} | charloom: {name} | {report.spread(r, '{:,.0f}')} | "
                        f"{report.spread(r, '{:,.0f}')} | {gflops:.1f} ({gflops / peak:.0%} of peak) | {ratio} |")
        rows.append(f"| {threads} | `torch.mm` 2048 x 2048 (the peak) | | | {peak:.1f} | |")
        print("\n".join(rows[-6:]), flush=True)
    body = "\n".join([
        "## Training throughput",
        "",
        f"Command: `python bench/train_speed_bench.py --repeats {args.repeats}`.",
        f"Machine: {report.machine()}.",
        "Median (min-max) over the repeats. charloom rows: batch 64 x 100 random windows, AdamW, clip 1. See the "
        "script's docstring for the notebooks' method as re-implemented, and for how FLOPs are counted.",
        "",
        "| threads | what | corpus characters/s | positions/s | effective GFLOP/s | vs notebooks |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    report.write_section("train-speed", body)
    print(body)


if __name__ == "__main__":
    main()
