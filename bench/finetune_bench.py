"""Fine-tuning against training from scratch, on the same new text and the same time budget.

    python bench/finetune_bench.py [--parent-minutes 5] [--minutes 1 2]

The bundled Shakespeare is cut in two: the general text (its first 90%) trains a parent model, and the
rest (the last plays, unseen by the parent) is the new text. On the new text, each budget trains once
from scratch and once with `--init-from` the parent, with the same model shape; both are scored on the
new text's held-out split (its last 5%, the whole split) by the model file the run saves, as `charloom sample`
and `charloom eval` read it: its best weights with its n-gram of the new text mixed in; and by those weights
alone. The parent's own time is not counted in the budget: it is the model a user already has.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import runs  # noqa: E402

import charloom  # noqa: E402
import charloom.checkpoint  # noqa: E402  (the package imports its modules lazily)
from charloom.batching import eval_windows  # noqa: E402
from charloom.corpus import bundled, read_chunks  # noqa: E402
from charloom.evaluation import Evaluation  # noqa: E402
from charloom.evaluation import score as score_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=512, num_layers=1, embedding=64)
QUIET = dict(progress=False, sample_length=0, overwrite=True)


def split_texts(folder: Path) -> tuple[Path, Path]:
    text = "".join(read_chunks(bundled()["shakespeare"].path))
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
    general, new = folder / "general.txt", folder / "new.txt"
    general.write_text(text[:cut])
    new.write_text(text[cut:])
    return general, new


def score(run: Path, new: Path) -> Evaluation:
    """The whole held-out split of the new text (at `new`, wherever the run read it from) scored by the run's
    model file: the best weights, with its n-gram mixed in where it has one (`network_bpc`: the weights alone)."""
    ck = charloom.load(run)
    configs = charloom.checkpoint.run_configs(run / charloom.checkpoint.RESUME_FILE)
    corpus = charloom.load_corpus(charloom.CorpusConfig.from_dict({**configs["corpus"], "source": str(new)}),
                                  vocab=ck.vocab)
    val = charloom.prepare(corpus, charloom.BatchConfig.from_dict(configs["batch"])).val
    batches = eval_windows(val, 1024, 1, ck.vocab.pad_id)
    return runs.as_saved(ck, batches)


def cells(e: Evaluation) -> list[str]:
    """A score's cells: as saved, and the network alone."""
    return [f"{e.bpc:.3f}", f"{e.network_bpc if e.network_bpc is not None else e.bpc:.3f}"]


def train_once(reuse: bool, out: Path, **options) -> None:
    """Train into `out`, or keep the run already there when `reuse` is set (to redo only the scoring)."""
    if not (reuse and (out / "last.safetensors").is_file()):
        charloom.train(out=str(out), **options, **QUIET)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parent-minutes", type=float, default=5)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 2])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "finetune-bench"))
    ap.add_argument("--reuse", action="store_true", help="keep runs already in --runs; train only the missing ones")
    args = ap.parse_args()
    runs = Path(args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        general, new = split_texts(Path(tmp))
        parent = runs / "parent"
        train_once(args.reuse, parent, source=str(general), max_time=f"{args.parent_minutes}m", **SHAPE)
        ck = charloom.load(parent)
        before = score_text(ck.model, charloom.load_corpus(charloom.CorpusConfig(source=str(new)), vocab=ck.vocab))
        rows = []
        for minutes in args.minutes:
            scratch, tuned = runs / f"scratch-{minutes:g}m", runs / f"tuned-{minutes:g}m"
            train_once(args.reuse, scratch, source=str(new), max_time=f"{minutes}m", **SHAPE)
            train_once(args.reuse, tuned, source=str(new), max_time=f"{minutes}m", init_from=str(parent))
            s, t = score(scratch, new), score(tuned, new)
            rows.append(report.row(f"{minutes:g} min", *cells(s), *cells(t), f"{t.bpc - s.bpc:+.3f}"))
            print(rows[-1], flush=True)
        new_chars = len(new.read_text())
    precision = charloom.load(runs / "parent").info.get("precision")  # auto: what the probe chose
    body = "\n".join([
        "## Fine-tuning against training from scratch",
        "",
        f"Command: `python bench/finetune_bench.py --parent-minutes {args.parent_minutes:g} --minutes "
        f"{' '.join(f'{m:g}' for m in args.minutes)}` (the runs of that command; `--reuse` redoes the scoring).",
        f"Machine: {report.machine()}.",
        f"The bundled Shakespeare's first 90% trains the parent (LSTM 1x{SHAPE['hidden_size']}, embedding "
        f"{SHAPE['embedding']}, {args.parent_minutes:g} minutes, every run in {precision}); the last 10% "
        f"({new_chars:,} characters, plays the "
        f"parent never read) is the new text. Each row trains on the new text for the same time from scratch and "
        f"from the parent (`--init-from`), and scores the new text's whole held-out split (its last 5%) by the model "
        f"file it saves (its best weights with its n-gram of the new text), and by its network alone. The "
        f"parent alone, before fine-tuning, scores {before.bpc:.3f} bpc on the whole new text.",
        "",
        *report.table(["budget on the new text", "from scratch, as saved (bpc)", "its network alone",
                       "fine-tuned, as saved", "its network alone", "difference as saved"], rows),
    ])
    report.write_section("finetune", body)
    print(body)


if __name__ == "__main__":
    main()
