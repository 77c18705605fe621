"""Quality for time: held-out bits per character after 2, 5 and 10 minutes, charloom's defaults against
the notebooks' method, as a table and a PNG plot; plus peak training memory and time to first character.

    python bench/quality_bench.py [--budgets 2 5 10]

charloom: one `charloom train shakespeare --max-time Nm` run per budget (its schedule fits its budget).
The notebooks' method (bench/notebook.py) has a constant learning rate, so one run scored when it passes
each budget gives the same figures as separate runs. Held-out = the last 5% of the corpus, scored two
ways: whole, in order, with the state carried from character to character (batch 1); and the mean over
2,048 fixed random 64-character windows, each from a zero state (the measure transformer figures use).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook  # noqa: E402
import report  # noqa: E402

import charloom  # noqa: E402
from charloom.batching import Batch, Stream, eval_windows  # noqa: E402

PLOT = Path(__file__).resolve().parent / "quality.png"


def held_out(model, data) -> tuple[float, float]:
    """(whole-text bpc with state carried, mean bpc over 2,048 fixed random 64-character windows)."""
    val: Stream = data.val
    pad = data.corpus.vocab.pad_id
    whole = charloom.evaluate(model, eval_windows(val, 1024, 1, pad))
    starts = np.random.default_rng(0).integers(0, len(val) - 65, 2048)
    chunk = val.gather(starts[:, None] + np.arange(65))  # (2048, 65)
    windows = [Batch(chunk[i:i + 256, :-1], chunk[i:i + 256, 1:], pad) for i in range(0, 2048, 256)]
    return whole.bpc, charloom.evaluate(model, windows).bpc


def charloom_run(minutes: float, out: Path) -> dict:
    cmd = [sys.executable, "-m", "charloom", "train", "shakespeare", "--max-time", f"{minutes:g}m", "--out", str(out),
           "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    return {"peak_rss": peak}


def time_to_first_character(model_dir: Path, repeats: int = 3) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "charloom", "sample", "--checkpoint", str(model_dir), "--start",
                              "ROMEO.", "--length", "200", "--seed", "1"], stdout=subprocess.PIPE)
        p.stdout.read(len("ROMEO.") + 1)  # the start text, then the first generated character
        out.append(time.perf_counter() - t0)
        p.communicate()
    return out


def plot(budgets: list[float], ours: dict, theirs: dict) -> str:
    """Draw the table as bench/quality.png; returns the line that points to it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(matplotlib is not installed: no plot; `pip install -e '.[plot]'`.)"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(budgets, [ours[m][0] for m in budgets], "o-", label="charloom defaults (whole text)")
    ax.plot(budgets, [ours[m][1] for m in budgets], "o--", label="charloom defaults (64-char windows)")
    ax.plot(budgets, [theirs[m][0] for m in budgets], "s-", label="notebooks' method (whole text)")
    ax.plot(budgets, [theirs[m][1] for m in budgets], "s--", label="notebooks' method (64-char windows)")
    ax.axhline(2.24, color="grey", lw=0.8, ls=":", label="nanoGPT char transformer after 10 min: 2.24 (reference)")
    ax.set_xlabel("training time on this CPU (minutes)")
    ax.set_ylabel("held-out bits per character")
    ax.set_title("Shakespeare, last 5% held out")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT)
    return f"Plot: `bench/{PLOT.name}`."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10])
    args = ap.parse_args()
    corpus = charloom.load_corpus(charloom.CorpusConfig(source="shakespeare"))
    data = charloom.prepare(corpus, charloom.BatchConfig())  # the default split: the last 5% held out
    vocab = corpus.vocab
    ours, peak = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.budgets:
            run = Path(tmp) / f"{m:g}m"
            peak = max(peak, charloom_run(m, run)["peak_rss"])
            ck = charloom.load(run / "last.safetensors")
            ours[m] = held_out(ck.model.eval(), data)
            print(f"charloom {m:g} min: {ours[m]}", flush=True)
        first = time_to_first_character(Path(tmp) / f"{args.budgets[-1]:g}m")

    # the notebooks' method, scored as it passes each budget
    torch.manual_seed(0)
    train_text = vocab.decode(corpus.ids[:len(data.train.stream)])
    texts = notebook.texts_of(train_text)
    order = np.random.default_rng(0).permutation(len(texts))
    net = notebook.LSTMGenerator(len(vocab), 64)
    opt = torch.optim.Adam(net.parameters(), 0.01)
    theirs, curve_t, curve_b = {}, [], []
    pending = sorted(args.budgets)
    elapsed, i = 0.0, 0
    while pending:
        t0 = time.perf_counter()
        for _ in range(50):
            notebook.train_step(net, opt, texts[order[i % len(texts)]], vocab)
            i += 1
        elapsed += time.perf_counter() - t0
        if elapsed >= pending[0] * 60:
            theirs[pending.pop(0)] = held_out(net.eval(), data)
            net.train()
            print(f"notebooks {elapsed / 60:.1f} min: {theirs}", flush=True)

    rows = [f"| {m:g} min | {ours[m][0]:.3f} | {ours[m][1]:.3f} | {theirs[m][0]:.3f} | {theirs[m][1]:.3f} |"
            for m in args.budgets]
    plot_line = plot(args.budgets, ours, theirs)
    body = "\n".join([
        "## Quality for time",
        "",
        f"Command: `python bench/quality_bench.py --budgets {' '.join(f'{m:g}' for m in args.budgets)}`.",
        f"Machine: {report.machine()}. One run per budget for charloom; see the script's docstring for the method.",
        "",
        "| training time | charloom: whole text | charloom: 2,048 windows | notebooks' method: whole text | "
        "notebooks' method: 2,048 windows |",
        "|---|---|---|---|---|",
        *rows,
        "",
        plot_line,
        "",
        f"Peak memory of a `charloom train` run (largest RSS of the runs above): {peak / 1e6:,.0f} MB.",
        f"Time from starting `charloom sample` (a new process, {args.budgets[-1]:g}-minute model) to its first generated "
        f"character: {report.spread(first, '{:.2f}')} s.",
    ])
    report.write_section("quality", body)
    print(body)


if __name__ == "__main__":
    main()
