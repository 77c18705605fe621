"""Training benchmark: what `charloom train` reaches on the bundled Shakespeare in a fixed time on this machine.

    python bench/train_bench.py [--budgets 2m 10m]

Runs the real command for each budget with the default (recommended) options and records the final
validation bits per character: the held-out last 5% of the corpus, scored whole in 64 parallel streams
with state carried from window to window.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402


def run(budget: str, out: Path, extra: list[str]) -> dict:
    cmd = ["charloom", "train", "shakespeare", "--max-time", budget, *extra]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "charloom", *cmd[1:], "--out", str(out), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {"command": " ".join(cmd), "val_bpc": last["val_bpc"], "steps": last["step"],
            "characters": last["characters"], "chars_per_s": last["characters"] / last["seconds"], "wall": wall,
            "curve": [(r["seconds"], r["val_bpc"]) for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", nargs="+", default=["2m", "10m"])
    ap.add_argument("extra", nargs="*", help="more flags for charloom train (after --)")
    args = ap.parse_args()
    from charloom.config import ModelConfig, TrainConfig, BatchConfig

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.budgets:
            r = run(b, Path(tmp) / b, args.extra)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
    m, t, bc = ModelConfig(), TrainConfig(), BatchConfig()
    rows = [f"| `{r['command']}` | {r['val_bpc']:.3f} | {r['steps']:,} | {r['characters'] / 1e6:.1f} M | "
            f"{r['chars_per_s']:,.0f} |" for r in results]
    body = "\n".join([
        "## Training: validation bits per character for time",
        "",
        f"Command: `python bench/train_bench.py --budgets {' '.join(args.budgets)}`"
        + (f" -- {' '.join(args.extra)}" if args.extra else "") + ".",
        f"Machine: {report.machine()}. One run per budget (a run takes its whole budget).",
        f"Defaults: {m.cell} {m.num_layers}x{m.hidden_size}, embedding {m.embedding or 'one-hot'}, "
        f"batch {bc.batch_size} x {bc.seq_len} ({bc.order}), AdamW lr {t.lr:g} with {t.warmup} warm-up steps and "
        f"{t.schedule} decay to {t.min_lr_ratio:g} x lr over the budget, gradient clip {t.grad_clip:g}.",
        "Validation: the last 5% of the corpus (252,862 characters), scored whole at the end of the run in "
        f"{bc.batch_size} parallel streams, state carried across windows.",
        "",
        "| command | validation bpc | steps | characters trained | characters/s |",
        "|---|---|---|---|---|",
        *rows,
    ])
    report.write_section("train", body)
    print(body)


if __name__ == "__main__":
    main()
