"""Generation benchmark: characters per second at batch 1 and 64, against the notebooks' loop.

    python bench/generate_bench.py [--repeats 3]

The baseline is the notebooks' `generate_soft`: one `model(...)` call per character from a Python loop,
`torch.multinomial` on `exp(logits / t)`, autograd left on, characters appended to a list. It writes one
text at a time, so its batch-64 figure is its batch-1 speed. charloom's Generator runs the same model
(same weights) at temperature 0.8. Models have random weights: speed does not depend on training.

Bounds: a step costs `step_flops` per character (the first layer's input product is a table lookup).
At batch 1 its products are matrix-vector products, so the step cannot beat `step_flops` at the rate of a
(1 x H) by (H x G*H) `torch.mm` (G gate blocks: 4 for an LSTM); at batch 64 it cannot beat the rate of a
(64 x H) by (H x G*H) product.
Both rates are measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook  # noqa: E402
import report  # noqa: E402

from charloom import CharRNN, Generator, ModelConfig  # noqa: E402
from charloom.corpus import bundled, read_chunks  # noqa: E402
from charloom.model import forward_flops  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

# the recurrent networks alone (a linear head, no attention head), as the notebooks build theirs, and the 2x512
# network with the head today's defaults add: an attention head over its last 256 outputs and a hidden layer
ALONE = dict(head_hidden=0, attention=0)
MODELS = {"1x64 LSTM, one-hot, linear head": dict(num_layers=1, hidden_size=64, embedding=0, **ALONE),
          "2x512 LSTM, embedding 512, linear head": dict(num_layers=2, hidden_size=512, embedding=512, **ALONE),
          "2x512 LSTM, embedding 512, the defaults' head": dict(num_layers=2, hidden_size=512, embedding=512)}


def step_flops(cfg: ModelConfig) -> float:
    """FLOPs of one generation step per character: recurrent products, later layers' input products, head
    (the first layer's input product is a table read)."""
    return forward_flops(cfg, head=True, lookup=True)


def rate(fn, chars: int, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(chars / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    text = "".join(read_chunks(bundled()["shakespeare"].path))[:200_000]
    vocab = Vocab.build(text)
    rows, bounds = [], []
    for name, shape in MODELS.items():
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(cell="lstm", vocab_size=len(vocab), **shape)).eval()
        gen = Generator(model, vocab)
        n1, n64 = 1000, 300
        base = rate(lambda: notebook.generate_soft(model, vocab, n1 // 4, "ROMEO", 0.8), n1 // 4, args.repeats)
        one = rate(lambda: gen.generate("ROMEO", n1, n=1, temperature=0.8, seed=1), n1, args.repeats)
        many = rate(lambda: gen.generate("ROMEO", n64, n=64, temperature=0.8, seed=1), 64 * n64, args.repeats)
        b, o, m = (statistics.median(x) for x in (base, one, many))
        H, G, flops = model.cfg.hidden_size, model.cell.gates, step_flops(model.cfg)
        bound1 = report.product_rate(1, H, G * H, args.repeats) * 1e9 / flops
        bound64 = report.product_rate(64, H, G * H, args.repeats) * 1e9 / flops
        rows.append(report.row(name, report.spread(base, "{:,.0f}"), report.spread(one, "{:,.0f}"),
                               report.spread(many, "{:,.0f}"), f"{o / b:.1f}x", f"{m / b:.0f}x", f"{m / o:.1f}x"))
        bounds.append(report.row(name, f"{flops / 1e6:.2f}", f"{bound1:,.0f}", f"{o / bound1:.0%}", f"{bound64:,.0f}",
                                 f"{m / bound64:.0%}", f"{bound64 / o:.1f}x"))
        print(rows[-1], bounds[-1], flush=True)
    body = "\n".join([
        "## Generation: characters per second",
        "",
        f"Command: `python bench/generate_bench.py --repeats {args.repeats}`.",
        f"Machine: {report.machine()}, {torch.get_num_threads()} torch threads.",
        "Median (min-max) characters per second over the repeats, temperature 0.8. Baseline: the notebooks' "
        "`generate_soft` loop on the same model; it writes one text at a time, so at batch 64 it runs at its "
        "batch-1 speed. Ratios are of medians measured in the same run.",
        "",
        *report.table(["model", "notebooks' loop", "charloom, batch 1", "charloom, batch 64", "batch 1 vs loop",
                       "batch 64 vs loop", "batch 64 vs batch 1"], rows),
        "",
        "Against what this CPU allows (see the docstring): each bound is the step's FLOPs at the rate `torch.mm` "
        "reaches on the step's product shape, measured in this run. The last column is the most that batch 64 "
        "could be over charloom's batch 1 here, even at the bound.",
        "",
        *report.table(["model", "MFLOP per character", "batch-1 bound (chars/s)", "batch 1 of bound",
                       "batch-64 bound (chars/s)", "batch 64 of bound", "batch-64 bound vs batch 1"], bounds),
    ])
    report.write_section("generate", body)
    print(body)


if __name__ == "__main__":
    main()
