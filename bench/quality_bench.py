"""Quality for time: held-out bits per character after 2, 5 and 10 minutes of `charloom train` with its
defaults, on this machine's kernel path and on oneDNN's AVX2 path, static and adapted while reading, beside
PPMd and the notebooks' method; plus peak training memory and time to first character.

    python bench/quality_bench.py [--budgets 2 5 10] [--paths native avx2] [--no-notebook] [--flags '--hidden 640']

charloom: one `charloom train shakespeare --max-time Nm` run per budget and path (its width and schedule fit
its budget and the machine). With --flags F, each budget also runs with those flags (`--hidden 640`,
`--batch-size 32`), the same day on the same machine, to show what a default gains over another choice.
The AVX2 path is the same command with the variables of `report.AVX2_PATH`, which hold ATen's, oneDNN's and
MKL's kernels to AVX2 on any x86 machine, as on an AVX2-only CPU (no bf16 LSTM there, so the run computes in
fp32). Earlier AVX2 rows capped oneDNN alone: their label says "ATen AVX512".
The notebooks' method (bench/notebook.py) has a constant learning rate, so one run scored when it passes
each budget gives the same figures as separate runs.
Held-out = the last 5% of the corpus, scored three ways: whole, in order, with the state carried (batch 1), by the
model as saved (the network mixed with its n-gram of the training text) and by the network alone;
the mean over 2,048 fixed random 64-character windows, each from a zero state (the measure transformer
figures use); whole, adapted while reading (`charloom eval --adapt` with its defaults: the network steps and its
n-gram counts); and whole with the network as trained and its n-gram counting (`--adapt-lr 0`). PPMd reads the
same split as bench/adapt_bench.py describes.

Each figure is appended to bench/quality.jsonl as it is made; the section is rebuilt from the newest row of
each kind there, so a stopped benchmark loses only the run in progress.
"""

from __future__ import annotations

import argparse
import datetime
import os
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
from adapt_bench import PPMD, ppmd_bpc  # noqa: E402

import charloom  # noqa: E402
from charloom.batching import eval_windows  # noqa: E402
from charloom.config import EvalConfig  # noqa: E402
from charloom.evaluation import adapt  # noqa: E402

PLOT = Path(__file__).resolve().parent / "quality.png"
LOG = Path(__file__).resolve().parent / "quality.jsonl"
PATHS = {"native": {}, "avx2": report.AVX2_PATH}
FOLLOWERS = ", mixing weights told by followers"  # rows whose mixture weighs how many characters followed a context


def record(row: dict) -> None:
    report.append_log(LOG, {**row, "cpu": report.cpu_model(), "date": datetime.date.today().isoformat()})


def newest() -> dict[tuple, dict]:
    """The newest row of each (system, path, budget, CPU): a run on one machine never hides another's."""
    return {(r["system"], r.get("path", ""), r.get("minutes", 0), report.cpu_of(r)): r for r in report.read_log(LOG)}


def machines(rows: dict[tuple, dict]) -> list[str]:
    """The CPUs with charloom rows, the one of the newest row (the last logged) first."""
    shown = {report.cpu_of(r) for k, r in rows.items() if k[0] == "charloom"}
    logged = [report.cpu_of(r) for r in reversed(report.read_log(LOG)) if r.get("system") == "charloom"]
    return [cpu for cpu in dict.fromkeys(logged) if cpu in shown]


def isa_of(path: str) -> str:
    """The machine label of a path, measured in a process that runs it."""
    code = "import sys; sys.path.insert(0, 'bench'); import report; print(report.isa())"
    env = {**os.environ, **PATHS[path]}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def charloom_runs(budgets: list[float], path: str, data, flags: str = "") -> None:
    """Train and score one run per budget on one kernel path, with the defaults or with `flags` (rows go
    to the log)."""
    isa, cfg = isa_of(path), EvalConfig()
    pad = data.corpus.vocab.pad_id
    system = f"charloom {flags}" if flags else "charloom"
    with tempfile.TemporaryDirectory() as tmp:
        for m in budgets:
            run = Path(tmp) / f"{m:g}m"
            info = runs.train(m, run, flags=flags, env=PATHS[path])
            ck = charloom.load(run)  # the model file: the network and, by default, its n-gram
            network, windows = runs.held_out(ck.model.eval(), data)
            whole = runs.as_saved(ck, eval_windows(data.val, 1024, 1, pad)).bpc
            t0 = time.perf_counter()
            adapted = adapt(ck.model, eval_windows(data.val, cfg.adapt_segment, 1, pad), cfg.adapt_lr,
                            cfg.adapt_decay, mixture=ck.mixture)
            adapt_seconds = time.perf_counter() - t0
            counting = adapt(ck.model, eval_windows(data.val, 1024, 1, pad), 0.0, mixture=ck.mixture).bpc \
                if ck.mixture else None  # the network as trained, its n-gram counting what it reads
            sized = ck.info.get("sizing", {})
            configs = charloom.checkpoint.run_configs(run / charloom.checkpoint.RESUME_FILE)
            trained, batch = configs["train"], configs["batch"]
            record({"system": system, "path": path, "isa": isa, "env": report.path_words(PATHS[path]), "minutes": m,
                    "precision": info["precision"],
                    "command": info["command"], "hidden": ck.model.cfg.hidden_size,
                    "head_hidden": ck.model.cfg.head_width,
                    "parameters": ck.model.num_parameters(), "predicted_bpc": sized.get("predicted_bpc"),
                    **{k: trained[k] for k in ("lr", "early_pieces")}, "batch": batch["batch_size"],
                    "predicted_characters": sized.get("characters"),
                    "steps": info["steps"], "characters": info["characters"], "seconds": info["seconds"],
                    "whole": whole, "network": network, "windows": windows, "adapted": adapted.bpc,
                    "adapted_network": adapted.network_bpc or adapted.bpc, "counting": counting,
                    "ngram": ck.info.get("ngram", {}).get("order", 0) if ck.mixture else 0,
                    "mixing_shape": list(ck.mixture.weights.shape[1:]) if ck.mixture else None,
                    "adapt_seconds": adapt_seconds, "peak_rss": info["peak_rss"], "threads": ck.info.get("threads")})
            if path == "native" and m == budgets[-1] and not flags:
                record({"system": "first-character", "model_minutes": m, "seconds": time_to_first_character(run)})


def _rate(r: dict) -> str:
    """The peak learning rate a row trained at, where it recorded one (earlier rows trained at 5e-3 whatever the
    width)."""
    return f", peak learning rate {r['lr']:.2g} for that width" if r.get("lr") else ""


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


def notebook_runs(budgets: list[float], data) -> None:
    """The notebooks' method, scored as it passes each budget (a constant learning rate: one run serves all)."""
    torch.manual_seed(0)
    vocab = data.corpus.vocab
    texts = notebook.texts_of(vocab.decode(data.corpus.ids[:len(data.train.stream)]))
    order = np.random.default_rng(0).permutation(len(texts))
    net = notebook.LSTMGenerator(len(vocab), 64)
    opt = torch.optim.Adam(net.parameters(), 0.01)
    pending, elapsed, i = sorted(budgets), 0.0, 0
    while pending:
        t0 = time.perf_counter()
        for _ in range(50):
            notebook.train_step(net, opt, texts[order[i % len(texts)]], vocab)
            i += 1
        elapsed += time.perf_counter() - t0
        if elapsed >= pending[0] * 60:
            whole, windows = runs.held_out(net.eval(), data)
            net.train()
            record({"system": "notebook", "path": "native", "isa": report.isa(), "minutes": pending.pop(0),
                    "precision": "fp32", "whole": whole, "windows": windows})


def plot(rows: dict[tuple, dict], budgets: list[float], ppmd: float, cpu: str) -> str:
    """Draw one CPU's figures as bench/quality.png; returns the line that points to it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(matplotlib is not installed: no plot; `pip install -e '.[plot]'`.)"
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for (system, path), style, label in [(("charloom", "native"), "o-", "charloom, native path"),
                                         (("charloom", "avx2"), "s-", "charloom, AVX2 path"),
                                         (("notebook", "native"), "^-", "notebooks' method")]:
        got = [(m, rows[(system, path, m, cpu)]) for m in budgets if (system, path, m, cpu) in rows]
        if got:
            ax.plot([m for m, _ in got], [r["whole"] for _, r in got], style, label=f"{label}: static")
            if system == "charloom":
                ax.plot([m for m, _ in got], [r["adapted"] for _, r in got], style.replace("-", "--"),
                        label=f"{label}: adapted while reading")
    ax.axhline(ppmd, color="grey", lw=1, ls=":", label=f"PPMd order 8 (7-Zip, 2 s): {ppmd:.3f}")
    ax.set_xlabel(f"training time on {cpu} (minutes)")
    ax.set_ylabel("held-out bits per character (whole tail)")
    ax.set_title("Shakespeare, last 5% held out")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT)
    return f"Plot (the newest machine's rows): `bench/{PLOT.name}`."


def _defaults_cell(r: dict) -> str:
    """The system cell of a row of charloom's defaults: the date, the n-gram, the width chosen and why."""
    return (f"charloom defaults ({r['date']}"
            f"{', n-gram order ' + str(r['ngram']) if r.get('ngram') else ', no n-gram'}"
            f"{FOLLOWERS if len(r.get('mixing_shape') or ()) == 3 else ''}): {r['hidden']} wide"
            f"{', batch ' + str(r['batch']) if r.get('batch') else ''} (chosen; the law "
            f"predicted {r['predicted_bpc']:.3f} after {_millions(r.get('predicted_characters'))}){_rate(r)}, "
            f"{r['characters'] / 1e6:.1f} M characters")


def _rows_of(rows: dict[tuple, dict], cpu: str, budgets: list[float]) -> list[str]:
    """One CPU's table rows: charloom's defaults and other flags on each path, then the notebooks' method."""
    fixed = sorted({k[0] for k in rows if k[0].startswith("charloom --")})
    table = []
    for path in PATHS:
        for m in budgets:
            r = rows.get(("charloom", path, m, cpu))
            if r:
                table.append(report.row(f"{m:g} min", _defaults_cell(r), *_figures(r, path)))
            for system in fixed:
                r = rows.get((system, path, m, cpu))
                if r:
                    table.append(report.row(f"{m:g} min", f"`{system}` ({r['date']}): {r['hidden']} wide, "
                                            f"{r['characters'] / 1e6:.1f} M characters", *_figures(r, path)))
    for m in budgets:
        r = rows.get(("notebook", "native", m, cpu))
        if r:
            table.append(report.row(f"{m:g} min", "the notebooks' method (one-hot LSTM 64)",
                                    f"{cpu}: {r['isa']}, fp32", f"{r['whole']:.3f}", f"{r['whole']:.3f}", "", "",
                                    f"{r['windows']:.3f}", "bench/notebook.py"))
    return table


def _newest_of(rows: dict[tuple, dict], system: str) -> dict:
    """The newest row of a system whose figure does not depend on the machine's speed (any CPU)."""
    got = sorted((r for k, r in rows.items() if k[0] == system), key=lambda r: r.get("date", ""))
    return got[-1] if got else {}


def section() -> str:
    rows = newest()
    budgets = sorted({k[2] for k in rows if k[2]})
    cpus = machines(rows)
    ppmd = _newest_of(rows, "ppmd").get("whole", float("nan"))
    table = [line for cpu in cpus for line in _rows_of(rows, cpu, budgets)]
    table.append(report.row("2 s", "PPMd order 8 (7-Zip)", "", f"{ppmd:.3f}", "", "(adapts as it reads)", "", "",
                            f"`7z a {PPMD}`"))
    ours = [r for k, r in rows.items() if k[0].startswith("charloom")]
    first_row = rows.get(("first-character", "", 0, cpus[0]), {}) if cpus else {}
    first = first_row.get("seconds")
    return "\n".join([
        "## Quality for time",
        "",
        f"Command: `python bench/quality_bench.py --budgets {' '.join(f'{m:g}' for m in budgets)}` (`make bench`). "
        f"Machine of this run: {report.machine()}, 2 threads; each row names the CPU and kernel path it ran on "
        f"(machines: {'; '.join(cpus)}). "
        "See the script's docstring for the method; rows accumulate in `bench/quality.jsonl`. Rows with a "
        "figure in the counting column adapt with the n-gram counting what it reads as well; older rows adapted the "
        "network beside a fixed n-gram.",
        "",
        *report.table(["training time", "system", "CPU, path and precision", "held-out bpc, whole tail",
                       "the network alone", "adapted while reading (network alone)",
                       "the network as trained, its n-gram counting as it reads", "2,048 windows (network alone)",
                       "command"], table),
        "",
        plot(rows, budgets, ppmd, cpus[0]) if cpus else "",
        "",
        f"Peak memory of a `charloom train` run (largest RSS of the runs above): "
        f"{max(r['peak_rss'] for r in ours) / 1e6:,.0f} MB." if ours else "",
        f"Time from starting `charloom sample` (a new process, {first_row.get('model_minutes', 10):g}-minute model, "
        f"{cpus[0] if cpus else ''}) to its first generated "
        f"character: {report.spread(first, '{:.2f}')} s." if first else "",
    ])


def _millions(characters: float | None) -> str:
    return f"{characters / 1e6:.1f} M characters" if characters else "the characters it expected"


def _figures(r: dict, path: str) -> list[str]:
    """A charloom row's cells after its name: path, static, the network alone, adapted, windows, command. Rows from
    before models had an n-gram are the network alone."""
    alone = r.get("adapted_network", r["adapted"])
    threads = f", {r['threads']} thread{'s' if r['threads'] > 1 else ''}" if r.get("threads") else ""
    return [f"{report.cpu_of(r)}: {r['isa']}, {r['precision']}{threads}", f"{r['whole']:.3f}", f"{r.get('network', r['whole']):.3f}",
            f"{r['adapted']:.3f}" + (f" ({alone:.3f})" if alone != r["adapted"] else ""),
            f"{r['counting']:.3f}" if r.get("counting") else "", f"{r['windows']:.3f}",
            f"`{r['command']}`" + (f" with `{r.get('env', 'ONEDNN_MAX_CPU_ISA=AVX2')}`" if path == "avx2" else "")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10])
    ap.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    ap.add_argument("--no-notebook", action="store_true", help="leave out the notebooks' method (its rows stay)")
    ap.add_argument("--flags", default="", help="also run each budget with these charloom train flags")
    args = ap.parse_args()
    data = runs.shakespeare()
    (start, end), = data.val.segments
    vocab, ids = data.corpus.vocab, data.corpus.ids
    record({"system": "ppmd", "whole": ppmd_bpc(vocab.decode(ids[:start]), vocab.decode(ids[start:end]))[0]})
    for path in args.paths:
        for flags in ["", args.flags] if args.flags else [""]:
            charloom_runs(args.budgets, path, data, flags)
            report.write_section("quality", section())
    if not args.no_notebook:
        notebook_runs(args.budgets, data)
    report.write_section("quality", section())
    print(section())


if __name__ == "__main__":
    main()
