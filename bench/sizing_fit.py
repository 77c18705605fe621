"""The law behind `charloom train`'s choice of width: held-out bpc against parameters and characters trained,
fitted on the runs of bench/sweep.jsonl that differ from the defaults only in width, precision and threads,
each at the peak learning rate the defaults give its width (`sizing.peak_lr`, given or not), and on the
quality bench's runs of the defaults (bench/quality.jsonl) that recorded their rate. The law's five numbers
are fitted on the runs that learn every batch whole (`--early-pieces 1`), then the worth of a character in a
run that cuts its early batches in pieces (`Law.early_worth`) on the runs that do.

    python bench/sizing_fit.py

bpc(N, D) = E + A / N**alpha + B / D_eff**beta, D_eff discounting repeated epochs as sizing.py does. The
exponents are found by a grid search; E, A and B by least squares at each pair. Prints the fitted law
(to paste into src/charloom/sizing.py) and writes the sizing section of BENCHMARKS.md: each run's
observed bpc beside the law's, and the width the law picks for some budgets in characters.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import runs  # noqa: E402

from charloom import ModelConfig, sizing  # noqa: E402
from charloom.config import EARLY_PIECE  # noqa: E402

FITTED_PIECES = 128 // EARLY_PIECE  # the early pieces of the fitted runs' windows of 128 when none were given

LOG = Path(__file__).resolve().parent / "sweep.jsonl"
QUALITY = Path(__file__).resolve().parent / "quality.jsonl"
FREE = {"--hidden", "--precision", "--threads"}  # flags that change speed or width, not the recipe
WORTHS = np.arange(1.0, 3.001, 0.05)  # the early pieces' worth tried
RATE_SLACK = 0.05  # a given --lr within 5% of the width's own rate counts as the defaults' (7e-3 at 448 wide)
MIN_STEPS = 250  # fewer steps spend a fifth of the run or more warming up: not the regime the law is for


def width_of(row: dict, model: ModelConfig) -> tuple[int, int] | None:
    """(width, early pieces) of a row run with the defaults' recipe: no flags but FREE ones, --early-pieces and
    a --lr near the width's own rate (None: a different recipe). Rows without --hidden took the width they
    chose, known by its parameters."""
    words, flags = shlex.split(row["flags"]), {}
    for i in range(0, len(words), 2):
        if i + 1 >= len(words) or words[i] not in FREE | {"--lr", "--early-pieces"}:
            return None
        flags[words[i]] = words[i + 1]
    width = int(flags.get("--hidden", 0)) or next(
        (w for w in sizing.WIDTHS if sizing.parameters(model, w) == row.get("parameters")), None)
    if not width or width < 0:
        return None
    rate, pieces = sizing.peak_lr(width), int(flags.get("--early-pieces", 0)) or FITTED_PIECES
    return (width, pieces) if abs((float(flags.get("--lr", 0)) or rate) / rate - 1) <= RATE_SLACK else None


def quality_rows() -> list[dict]:
    """The quality bench's runs of the plain defaults that recorded their rate, as sweep rows: the width they
    chose, and their network alone on the held-out tail. The sweep scores a run's last weights, the quality
    bench its model file (the best evaluated), which with the weight average is the last or close to it."""
    return [{"minutes": r["minutes"], "steps": r["steps"],
             "flags": f"--hidden {r['hidden']} --lr {r['lr']:g}"
             + (f" --early-pieces {r['early_pieces']}" if r["early_pieces"] != FITTED_PIECES else ""),
             "characters": r["characters"], "parameters": r["parameters"], "precision": r["precision"],
             "whole_bpc": r["network"], "source": "quality"}
            for r in report.read_log(QUALITY)
            if r.get("system") == "charloom" and r.get("lr") and not r.get("head_hidden")]  # the law's linear head


def fit(n: np.ndarray, d: np.ndarray, bpc: np.ndarray, unique: float) -> tuple[sizing.Law, float]:
    """The law with the least squared error on the runs, predicting as sizing.py does: exponents by grid search,
    E, A and B by least squares; parameters past the useful size are discounted by the law being fitted, so
    each pair of exponents iterates to a fixed point."""
    best = (np.inf, None)
    d_eff = np.array([sizing.discounted(c, unique, sizing.EPOCH_DECAY) for c in d])
    for alpha in np.arange(0.05, 1.01, 0.01):
        for beta in np.arange(0.05, 1.01, 0.01):
            n_eff, law = n, None
            for _ in range(8):
                X = np.stack([np.ones_like(n), n_eff ** -alpha, d_eff ** -beta], 1)
                coef, *_ = np.linalg.lstsq(X, bpc, rcond=None)
                if (coef[1:] <= 0).any():
                    law = None
                    break
                law = sizing.Law(*map(float, (coef[0], coef[1], alpha, coef[2], beta)))
                useful = law.useful_parameters(unique)
                n_eff = np.array([sizing.discounted(x, useful, sizing.EXCESS_DECAY) for x in n])
            if law is None:
                continue
            sse = float(sum((law.bpc(ni, di, unique) - b) ** 2 for ni, di, b in zip(n, d, bpc)))
            if sse < best[0]:
                best = (sse, law)
    return best[1], (best[0] / len(bpc)) ** 0.5


def fit_worth(law: sizing.Law, n: np.ndarray, d: np.ndarray, bpc: np.ndarray, unique: float) -> sizing.Law:
    """`law` with the early pieces' worth that predicts the runs with them best (1 when there are none)."""
    def sse(worth: float) -> float:
        early = dataclasses.replace(law, early_worth=float(worth))
        return sum((early.bpc(ni, di, unique, early=True) - b) ** 2 for ni, di, b in zip(n, d, bpc))
    return dataclasses.replace(law, early_worth=float(min(WORTHS, key=sse)) if len(bpc) else 1.0)


def main() -> None:
    data = runs.shakespeare()
    vocab, unique = len(data.corpus.vocab), data.train_characters
    model = ModelConfig(vocab_size=vocab, head_hidden=0)  # the runs the law is fitted on had a linear head
    taken = [(r, *wp) for r in [*report.read_log(LOG), *quality_rows()]
             if r["steps"] >= MIN_STEPS and (wp := width_of(r, model))]
    rows = [r for r, _, _ in taken]
    n = np.array([r.get("parameters") or sizing.parameters(model, w) for r, w, _ in taken], float)
    seen = np.array([r["characters"] for r in rows], float)
    bpc = np.array([r["whole_bpc"] for r in rows])
    early = np.array([p > 1 for _, _, p in taken])
    law, rms = fit(n[~early], seen[~early], bpc[~early], unique)
    law = fit_worth(law, n[early], seen[early], bpc[early], unique)
    errors = np.array([law.bpc(ni, ci, unique, e) - b for ni, ci, b, e in zip(n, seen, bpc, early)])
    rms_early = float(np.sqrt(np.mean(errors[early] ** 2))) if early.any() else 0.0
    print(f"LAW = Law(E={law.E:.4f}, A={law.A:.4g}, alpha={law.alpha:.2f}, B={law.B:.4g}, beta={law.beta:.2f}, "
          f"early_worth={law.early_worth:.2f})")
    print(f"rms error {rms:.4f} bpc over {(~early).sum()} runs of whole batches, {rms_early:.4f} over "
          f"{early.sum()} with the early pieces; useful parameters for this corpus: "
          f"{law.useful_parameters(unique):,.0f}")
    write_section(model, unique, law, (rms, rms_early), rows, n, seen, early)


def write_section(model: ModelConfig, unique: float, law: sizing.Law, rms: tuple[float, float], rows: list[dict],
                  n: np.ndarray, seen: np.ndarray, early: np.ndarray) -> None:
    lines = [report.row(f"{r['minutes']:g} min" + (" (quality)" if r.get("source") else ""), r.get("precision", "bf16"),
                        f"`{r['flags'] or '(defaults)'}`", f"{ni:,.0f}", f"{ci / 1e6:.1f} M", f"{r['whole_bpc']:.3f}",
                        f"{law.bpc(ni, ci, unique, e):.3f}")
             for r, ni, ci, e in sorted(zip(rows, n, seen, early), key=lambda t: (t[3], t[1], t[2]))]
    picks = [report.row(f"{c / 1e6:g} M", *(sizing.choose(model, "", unique, lambda w, c=c: c, law=law,
                                                          early=e).hidden_size for e in (True, False)))
             for c in (1e6, 3e6, 10e6, 30e6, 100e6)]
    body = "\n".join([
        "## Choosing the width: the law behind sizing",
        "",
        "Command: `python bench/sizing_fit.py` (after `bench/sweep.py` runs that vary `--hidden`). The runs of the "
        "sweep that differ from the defaults only in width, precision, threads or early pieces, each at the peak "
        "learning rate the defaults give its width (`--lr` absent, or within 5% of it), and the quality section's "
        "runs of the defaults that recorded their rate (marked quality; their network alone, the model file's "
        "weights). The runs that learn every batch whole (`--early-pieces 1`) are fitted as "
        "bpc = E + A / N^alpha + B / D^beta (N parameters, D characters trained, repeated epochs discounted as "
        "in `src/charloom/sizing.py`): "
        f"E = {law.E:.3f}, A = {law.A:.4g}, alpha = {law.alpha:.2f}, B = {law.B:.4g}, beta = {law.beta:.2f}; "
        f"root-mean-square error {rms[0]:.3f} bpc over {(~early).sum()} runs. The runs with the early pieces "
        f"(the default) then fit the worth of their characters: D counts {law.early_worth:.2f} times, "
        f"root-mean-square error {rms[1]:.3f} bpc over {early.sum()} runs. Runs of fewer than {MIN_STEPS} steps "
        "are left out: they spend a fifth of their steps or more warming up. Rows without a precision are from "
        "before runs recorded it (bf16, the native path of this machine, 2 threads).",
        "",
        *report.table(["budget", "precision", "flags", "parameters", "characters trained", "held-out bpc",
                       "the law's bpc"], lines),
        "",
        "The width `charloom train shakespeare` takes (1 layer, embedding 64) for a budget of characters; "
        "a time budget becomes characters through the rate measured at the start of the run:",
        "",
        *report.table(["characters trained", "width chosen", "width chosen with `--early-pieces 1`"], picks),
    ])
    report.write_section("sizing", body)


if __name__ == "__main__":
    main()
