"""Quality for time: held-out bits per character after 2, 5 and 10 minutes, charloom's defaults against
the notebooks' method, as a table and a PNG plot; plus training speed, peak training memory and time to
first character.

    python bench/quality_bench.py [--budgets 2 5 10]

charloom: one `charloom train shakespeare --max-time Nm` run per budget (its schedule fits its budget).
The notebooks' method (bench/notebook.py) has a constant learning rate, so one run scored when it passes
each budget gives the same figures as separate runs. Held-out = the last 5% of the corpus, scored two
ways: whole, in order, with the state carried from character to character (batch 1); and the mean over
2,048 fixed random 64-character windows, each from a zero state (the measure transformer figures use).
"""

from __future__ import annotations

import argparse
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
import runs  # noqa: E402

import charloom  # noqa: E402
from charloom.runtime import resolve_precision  # noqa: E402

PLOT = Path(__file__).resolve().parent / "quality.png"


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
    data = runs.shakespeare()
    corpus, vocab = data.corpus, data.corpus.vocab
    ours, info, peak = {}, {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.budgets:
            run = Path(tmp) / f"{m:g}m"
            info[m] = runs.train(m, run)
            peak = max(peak, info[m]["peak_rss"])
            ours[m] = runs.held_out(charloom.load(run / "last.safetensors").model.eval(), data)
            print(f"charloom {m:g} min: {ours[m]}", flush=True)
        first = time_to_first_character(Path(tmp) / f"{args.budgets[-1]:g}m")

    # the notebooks' method, scored as it passes each budget
    torch.manual_seed(0)
    train_text = vocab.decode(corpus.ids[:len(data.train.stream)])
    texts = notebook.texts_of(train_text)
    order = np.random.default_rng(0).permutation(len(texts))
    net = notebook.LSTMGenerator(len(vocab), 64)
    opt = torch.optim.Adam(net.parameters(), 0.01)
    theirs = {}
    pending = sorted(args.budgets)
    elapsed, i = 0.0, 0
    while pending:
        t0 = time.perf_counter()
        for _ in range(50):
            notebook.train_step(net, opt, texts[order[i % len(texts)]], vocab)
            i += 1
        elapsed += time.perf_counter() - t0
        if elapsed >= pending[0] * 60:
            theirs[pending.pop(0)] = runs.held_out(net.eval(), data)
            net.train()
            print(f"notebooks {elapsed / 60:.1f} min: {theirs}", flush=True)

    rows = [report.row(f"{m:g} min", *(f"{x:.3f}" for x in (*ours[m], *theirs[m]))) for m in args.budgets]
    speed = [report.row(f"`{info[m]['command']}`", f"{info[m]['steps']:,}",
                        f"{info[m]['characters'] / 1e6:.1f} M ({info[m]['characters'] / len(data.train.stream):.1f} epochs)",
                        f"{info[m]['characters'] / info[m]['seconds']:,.0f}") for m in args.budgets]
    mc, t, bc = charloom.ModelConfig(), charloom.TrainConfig(), charloom.BatchConfig()
    plot_line = plot(args.budgets, ours, theirs)
    body = "\n".join([
        "## Quality for time",
        "",
        f"Command: `python bench/quality_bench.py --budgets {' '.join(f'{m:g}' for m in args.budgets)}`.",
        f"Machine: {report.machine()}. One run per budget for charloom; see the script's docstring for the method.",
        f"charloom's defaults: {mc.cell} {mc.num_layers}x{mc.hidden_size}, embedding {mc.embedding or 'one-hot'}, "
        f"batch {bc.batch_size} x {bc.seq_len} ({bc.order}), AdamW lr {t.lr:g} and weight decay {t.weight_decay:g} "
        f"with {t.warmup} warm-up steps and "
        f"{t.schedule} decay to {t.min_lr_ratio:g} x lr over the budget, gradient clip {t.grad_clip:g}, "
        f"the model scored being the moving average of the weights (decay {t.ema:g}), precision {t.precision} "
        f"(here {resolve_precision(t.precision, torch.device('cpu'))}).",
        "",
        *report.table(["training time", "charloom: whole text", "charloom: 2,048 windows",
                       "notebooks' method: whole text", "notebooks' method: 2,048 windows"], rows),
        "",
        plot_line,
        "",
        "The charloom runs (training time includes the periodic evaluations, samples and checkpoints):",
        "",
        *report.table(["command", "steps", "characters trained", "characters/s"], speed),
        "",
        f"Peak memory of a `charloom train` run (largest RSS of the runs above): {peak / 1e6:,.0f} MB.",
        f"Time from starting `charloom sample` (a new process, {args.budgets[-1]:g}-minute model) to its first generated "
        f"character: {report.spread(first, '{:.2f}')} s.",
    ])
    report.write_section("quality", body)
    print(body)


if __name__ == "__main__":
    main()
