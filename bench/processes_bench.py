"""Both cores: one process of two threads against two processes (torchrun) of one thread each.

    python bench/processes_bench.py [--seconds 75] [--hidden 640]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/processes_bench.py
                                                                 # the same on the AVX2 path (report.AVX2_PATH)

Each layout trains `charloom train shakespeare` for the same time with no evaluations or samples on the
way, and reports the training characters per second of its last metrics row (all processes together).
Two processes either split the batch (the same 16 rows per step, 8 each) or each take a full one (32 rows
per step, which changes the recipe). Two separate runs at once, as a user starts a second job beside a first:
each with 2 threads (more threads than cores), and each with the threads it chooses: the second starts
STAGGER seconds after the first and finds its CPUs busy (the first's rate counts those seconds alone, a
twentieth of a minute's run), or both start together and find them idle (each run then looks again every
few seconds as it trains). The section is named after the kernel path, so both
stand side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

LAYOUTS = [  # (label, launcher, threads per process, rows per process)
    ("1 process x 2 threads, batch 16", [], 2, 16),
    ("2 processes x 1 thread, batch 8 each (16 per step)", ["--nproc_per_node=2"], 1, 8),
    ("2 processes x 1 thread, batch 16 each (32 per step)", ["--nproc_per_node=2"], 1, 16),
]
STAGGER = 3.0  # seconds between the two separate runs' starts: the first is training when the second looks
APART = [  # (label, threads of each run: 0 lets the run choose, seconds between their starts), two separate runs
    ("2 separate runs at once, 2 threads each (`--threads 2`)", 2, STAGGER),
    ("2 separate runs at once, threads chosen by each (the second finds the first's CPUs busy)", 0, STAGGER),
    ("2 separate runs started together, threads chosen by each (both find the CPUs idle)", 0, 0.0),
]


def _flags(threads: int, rows: int, seconds: float, hidden: int, out: Path) -> list[str]:
    return ["train", "shakespeare", "--max-time", f"{seconds:g}s", "--eval-every", "0", "--sample-length", "0",
            "--hidden", str(hidden), "--threads", str(threads), "--batch-size", str(rows), "--no-progress",
            "--ngram", "0", "--overwrite", "--out", str(out)]  # no n-gram: its fit after training is not timed


def _rate(out: Path) -> float:
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return last["characters"] / last["seconds"]


def rate(launcher: list[str], threads: int, rows: int, seconds: float, hidden: int, out: Path) -> float:
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", *launcher] if launcher else [sys.executable]
    subprocess.run([*runner, "-m", "charloom", *_flags(threads, rows, seconds, hidden, out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _rate(out)


def apart(threads: int, stagger: float, seconds: float, hidden: int, out: Path) -> float:
    """Two separate runs, the second started `stagger` seconds after the first: their rates summed."""
    runs = []
    for i in range(2):
        runs.append(subprocess.Popen([sys.executable, "-m", "charloom", *_flags(threads, 16, seconds, hidden,
                                                                                out / str(i))],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(stagger if i == 0 else 0)
    if any(p.wait() for p in runs):
        raise SystemExit("a run failed")
    return sum(_rate(out / str(i)) for i in range(2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=75)
    ap.add_argument("--hidden", type=int, default=640)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, launcher, threads, per) in enumerate(LAYOUTS):
            r = rate(launcher, threads, per, args.seconds, args.hidden, Path(tmp) / str(i))
            rows.append((label, r))
            print(label, f"{r:,.0f}", flush=True)
        for i, (label, threads, stagger) in enumerate(APART):
            r = apart(threads, stagger, args.seconds, args.hidden, Path(tmp) / f"apart{i}")
            rows.append((label, r))
            print(label, f"{r:,.0f}", flush=True)
    first = rows[0][1]
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    env = report.path_words(report.path_env())
    body = "\n".join([
        f"## Both cores: processes against threads{' (' + capped + ' path)' if capped else ''}",
        "",
        f"Command: `{env + ' ' if env else ''}python bench/processes_bench.py "
        f"--seconds {args.seconds:g} --hidden {args.hidden}`. Machine: {report.machine()}. "
        f"`charloom train shakespeare --hidden {args.hidden}` for {args.seconds:g} s per layout, precision auto, "
        "no evaluations; the rate is training characters per second of all processes together.",
        "",
        *report.table(["layout", "characters/s", "vs one process"],
                      [report.row(label, f"{r:,.0f}", f"{r / first:.2f}x") for label, r in rows]),
    ])
    report.write_section(f"processes-{capped.lower()}" if capped else "processes", body)
    print(body)


if __name__ == "__main__":
    main()
