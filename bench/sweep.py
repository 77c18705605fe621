"""The sweep behind the defaults: `charloom train shakespeare` for a fixed time with different flags,
each scored on the held-out last 5% (whole text with state carried, and 2,048 random 64-character windows).

    python bench/sweep.py --minutes 5 -- "" "--lr 1e-2" "--cell gru --hidden 640"

Each run is appended to bench/sweep.jsonl as it finishes (a long sweep loses nothing if stopped), and the
sweep section of BENCHMARKS.md is rewritten from all the rows there, best first within each budget.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import runs  # noqa: E402

import charloom  # noqa: E402

LOG = Path(__file__).resolve().parent / "sweep.jsonl"


def table() -> str:
    rows = report.read_log(LOG)
    rows.sort(key=lambda r: (r["minutes"], r["whole_bpc"]))
    lines = [report.row(f"{r['minutes']:g} min", f"`{r['flags'] or '(defaults)'}`", _path(r), f"{r['steps']:,}",
                        f"{r['characters'] / 1e6:.1f} M", f"{r['whole_bpc']:.3f}", f"{r['window_bpc']:.3f}", r["date"])
             for r in rows]
    return "\n".join([
        "## Choosing the defaults: the sweep",
        "",
        "Command: `python bench/sweep.py --minutes N -- FLAGS...` (one row per run, kept in `bench/sweep.jsonl`; "
        "`make sweep` reruns the set below). Each row is `charloom train shakespeare --max-time Nm FLAGS` on the "
        "CPU, kernel path and precision its row names, 2 threads (rows without a path are from before runs "
        f"recorded it: the native path, bf16, on the {report.EARLIER_CPU}). Flags are relative to "
        "today's defaults: when a default changes, earlier rows are rewritten to the flags that give the same run. "
        "Held-out bpc: the last 5% scored whole with state carried, and the mean over 2,048 fixed random "
        "64-character windows from a zero state. The machine is a shared virtual one: runs of the same "
        "model size reached step counts up to 20% apart (compare the characters trained), and differences under "
        "about 0.01 bpc are noise. Rows with the same flags are repeats (the 1.904 run with `--ema 0 --weight-decay 0` "
        "came after evaluations during training moved to bf16, which leaves about 2% more of the budget to "
        "training).",
        "",
        *report.table(["budget", "flags", "CPU, path and precision", "steps", "characters trained",
                       "held-out bpc (whole)", "held-out bpc (windows)", "date"], lines),
    ])


def _path(r: dict) -> str:
    """The kernel path and precision a row ran with, as recorded (empty for rows from before they were)."""
    return f"{report.cpu_of(r)}: {r['isa']}, {r['precision']}" if r.get("isa") else report.cpu_of(r)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("flags", nargs="*", default=[""], help="one string of charloom train flags per run")
    args = ap.parse_args()
    data = runs.shakespeare()
    for flags in args.flags:
        with tempfile.TemporaryDirectory() as tmp:
            r = runs.train(args.minutes, Path(tmp), flags)
            model = charloom.load(Path(tmp) / "last.safetensors").model.eval()
            whole, windows = runs.held_out(model, data)
        row = {"minutes": args.minutes, "flags": flags, "steps": r["steps"], "characters": r["characters"],
               "parameters": model.num_parameters(), "precision": r["precision"], "isa": report.isa(),
               "cpu": report.cpu_model(),
               "whole_bpc": round(whole, 4), "window_bpc": round(windows, 4), "date": datetime.date.today().isoformat()}
        report.append_log(LOG, row)
        report.write_section("sweep", table())


if __name__ == "__main__":
    main()
