"""The n-gram mixed with the network: the sweep behind its defaults, and what it costs.

    python bench/ngram_bench.py [--checkpoint RUN] [--minutes 10] [--samples 20]

RUN: a `charloom train shakespeare` run folder (without one, a `--max-time 10m` run is trained first). Its network is
mixed with n-grams of the training split made as a run makes them (`evaluation.fit_mixture`: weights fitted on the
200,000 characters the run left out of training, the start of its training split, with counts from the rest; then
the counts of the whole split; each n-gram counts the last 64 M / order characters at most), each setting scored
on the held-out last 5%, whole, in order, state carried. Settings: the longest order (a run keeps the shortest that
mixes as well), Witten-Bell's escape weight beta, and whether the weights also see how sure the network is (off:
every character in the network's least sure step). The sweep scores the linear mixture, before the model's last
layer (`ngram.fit_exponents`), which the quality section's figures include. (Fitting on more characters is not
measured here: any beyond those the run left out are ones its network learned, several passes over.)
Costs, for the default: time to build the counts and their size, one step of the n-gram alone for one
sample, and `charloom sample`'s rate at batch 1 with and without it. Copying: `--samples` samples of 500
characters at temperature 0.8 with and without the n-gram, and the share of their lines of 20 characters or
more that appear verbatim in the training text (what `sample --novelty` flags).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import runs  # noqa: E402

import charloom  # noqa: E402
from charloom import ngram  # noqa: E402
from charloom.batching import Stream, eval_windows, training_text  # noqa: E402
from charloom.config import TrainConfig  # noqa: E402
from charloom.evaluation import FIT_CHARS, fit_mixture, network_predictions  # noqa: E402
from charloom.novelty import Novelty  # noqa: E402
from charloom.sampling import Generator  # noqa: E402

SETTINGS = [  # (longest order, beta, the network's sureness seen, characters fitted on)
    (16, 4.0, True, FIT_CHARS), (10, 4.0, True, FIT_CHARS), (6, 4.0, True, FIT_CHARS), (8, 4.0, True, FIT_CHARS),
    (12, 4.0, True, FIT_CHARS),
    (10, 2.0, True, FIT_CHARS), (10, 6.0, True, FIT_CHARS), (10, 4.0, False, FIT_CHARS), (8, 4.0, False, FIT_CHARS)]


def sweep(ck, data, ids: np.ndarray) -> list[str]:
    V, pad = len(ck.vocab), ck.vocab.pad_id
    top = max(s[0] for s in SETTINGS)
    tail = network_predictions(ck.model, eval_windows(data.val, 1024, 1, pad), top)
    fitted = {}
    rows = [report.row("the network alone", "", "", "", f"{ngram.bits(tail[0]):.4f}", "")]
    for order, beta, sure, held in SETTINGS:
        start = len(ids) - held
        if held not in fitted:
            fitted[held] = network_predictions(ck.model, eval_windows(Stream(ids, [(start, len(ids))]), 1024, 1, pad), top)
        p, p_max, ctx, y = fitted[held]
        blind = (lambda a: a) if sure else np.zeros_like  # not seen: every character in the least sure bucket
        head = ids[:start]  # counted as a run counts it: the last 64 M / order characters at most
        kept = ngram.choose_order(ngram.NGram(head[-ngram.most_chars(order):], V, order, beta), p, blind(p_max),
                                  ctx[:, -order:], y)  # the shortest order that mixes as well as any up to `order`
        fitted_here = ngram.fit(ngram.NGram(head[-ngram.most_chars(kept):], V, kept, beta), p, blind(p_max),
                                ctx[:, -kept:], y)
        m = ngram.Mixture(ngram.NGram(ids[-ngram.most_chars(kept):], V, kept, beta), fitted_here.weights)
        mixed = m.target_probs(tail[0], blind(tail[1]), tail[2][:, -kept:], tail[3])
        rows.append(report.row(f"order {kept} (at most {order})", f"{beta:g}", "yes" if sure else "no", f"{held:,}",
                               f"{ngram.bits(mixed):.4f}", f"{ngram.bits(mixed) - ngram.bits(tail[0]):+.4f}"))
    return rows


def costs(ck, ids: np.ndarray) -> list[str]:
    """For the order the run kept (its saved mixture, or the one `measure` fits for a run saved without one)."""
    order = ck.mixture.ngram.order
    t0 = time.perf_counter()
    ng = ngram.NGram(ids, len(ck.vocab), order)
    tables = ng.orders()
    build = time.perf_counter() - t0
    size = sum(t.pairs.nbytes + t.cum.nbytes for t in tables)
    ctx = ngram.contexts(ids[None, -2001:-1], None, order)[0]
    t0 = time.perf_counter()
    for row in ctx[:2000]:
        ng.probs(row[None])
    step = (time.perf_counter() - t0) / 2000
    return [f"Order {order} over {len(ids):,} characters: counts built in {build:.1f} s, {size / 1e6:.0f} MB "
            f"({sum(len(t.pairs) for t in tables):,} pairs); one sample's step of the n-gram alone "
            f"{step * 1e6:.0f} us."]


def writing(ck, samples: int) -> list[str]:
    gen = Generator.from_checkpoint(ck)
    novelty = Novelty.for_checkpoint(ck)
    out = []
    for ngram_on in (True, False):
        gen.generate("\n", 50, seed=0, ngram=ngram_on)  # warm
        t0 = time.perf_counter()
        texts = gen.generate("\n", 500, n=1, seed=1, ngram=ngram_on)
        rate = 500 / (time.perf_counter() - t0)
        texts += gen.generate("\n", 500, n=samples - 1, seed=2, ngram=ngram_on)
        lines = [ln.strip() for t in texts for ln in t.split("\n") if len(ln.strip()) >= novelty.min_chars]
        copied = sum(ln in novelty.text for ln in lines)
        out.append(report.row("with the n-gram" if ngram_on else "the network alone", f"{rate:,.0f}",
                              f"{copied} of {len(lines)} ({copied / max(1, len(lines)):.0%})"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="a run folder (default: train one for --minutes)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    data = runs.shakespeare(fit=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "run"
        if not args.checkpoint:
            runs.train(args.minutes, folder)
        body = measure(charloom.load(folder), data, args)
    report.write_section("ngram", body)
    print(body)


def measure(ck, data, args: argparse.Namespace) -> str:
    torch.set_num_threads(2)
    saved, ck.mixture = ck.mixture, None  # the sweep makes its own
    ids, _ = training_text(data, ngram.MAX_CHARS)
    rows = sweep(ck, data, ids)
    # the costs are the saved mixture's, last layer and all, as `charloom sample` runs it
    if saved is None:
        saved = fit_mixture(ck.model, ids, len(ck.vocab), ck.vocab.pad_id, TrainConfig().ngram)
    ck.mixture = saved
    cost = costs(ck, ids[-ngram.most_chars(ck.mixture.ngram.order):])
    info = ck.info
    body = "\n".join([
        "## The n-gram mixed with the network: the sweep behind its defaults, and its costs",
        "",
        f"Command: `python bench/ngram_bench.py --samples {args.samples}"
        f"{' --checkpoint RUN' if args.checkpoint else ''}`, on a `charloom train shakespeare --max-time 10m` run "
        f"({info.get('precision')}, {info.get('characters_seen', 0) / 1e6:.1f} M characters, "
        f"{ck.config.hidden_size} wide). "
        f"Machine: {report.machine()}. See the script's docstring for the method.",
        "",
        *report.table(["n-gram", "beta", "sees how sure the network is", "fitted on characters",
                       "held-out bpc, whole tail", "vs the network alone"], rows),
        "",
        *cost,
        "",
        *report.table(["writing", "characters/s, batch 1", "lines of 20+ characters copied verbatim"],
                      writing(ck, args.samples)),
    ])
    return body


if __name__ == "__main__":
    main()
