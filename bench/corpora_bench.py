"""Not Shakespeare alone: held-out bits per character on other kinds of text, charloom with its defaults beside
PPMd on the same split.

    python bench/corpora_bench.py [--minutes 3] [--only code names] [--flags '--batch-size 16']
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/corpora_bench.py
                                                      # the same on the AVX2 path (report.AVX2_PATH)

Each run is appended to bench/corpora.jsonl; the section shows the newest run of each corpus and budget.

code:  the Python standard library's top-level modules (/usr/lib/python3.11/*.py), one continuous text, the
       last 5% held out and scored whole, in order, state carried.
names: the bundled names, records; the held-out records (charloom's seeded random split) each scored from
       <bos> through <eos>.
scripture: the King James Bible from Debian's bible-kjv (`bible -f gen1:1-rev22:21`), one verse a line with its
       reference cut off, one continuous text scored as code is (the held-out tail: the last books of the New
       Testament).
Each corpus: one `charloom train SOURCE --max-time Nm` with its defaults, scored as saved (the network mixed
with its n-gram of the training text), by the network alone, adapted while reading (`eval --adapt`'s
defaults: the network steps and its n-gram counts), and with the network as trained and its n-gram counting
(`--adapt-lr 0`). PPMd (7-Zip, order 8): bits = 8 x (archive of head+tail - archive of head) / tail characters, the
head being the training text and the tail the held-out one (records one per line, so a newline stands for
<eos>).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import runs  # noqa: E402
from adapt_bench import PPMD, ppmd_bpc  # noqa: E402

import charloom  # noqa: E402
import charloom.checkpoint  # noqa: E402  (the package imports its modules lazily)
from charloom.batching import Stream, eval_windows, heldout_batches, split_records, split_stream  # noqa: E402
from charloom.config import BatchConfig, EvalConfig  # noqa: E402
from charloom.evaluation import adapt  # noqa: E402

SCRIPTURE = Path(tempfile.gettempdir()) / "charloom-bench-kjv.txt"  # written by `scripture()`
CORPORA = {"code": "/usr/lib/python3.11/*.py", "names": "names", "scripture": str(SCRIPTURE)}
LOG = Path(__file__).resolve().parent / "corpora.jsonl"


def sources(names: list[str]) -> dict[str, str]:
    """The source each corpus trains from, leaving out (with a line) those this machine lacks."""
    out = {}
    for name in names:
        source = CORPORA[name]
        if name == "code" and not glob.glob(source):
            print("no /usr/lib/python3.11: the code corpus is left out", file=sys.stderr)
        elif name == "scripture" and scripture() is None:
            print("no `bible` (Debian's bible-kjv): the scripture corpus is left out", file=sys.stderr)
        else:
            out[name] = source
    return out


def scripture() -> str | None:
    """The King James Bible as a text file, one verse a line without its reference ("Ge1:1 "), written once from
    Debian's bible-kjv; None where its `bible` is not installed."""
    if not SCRIPTURE.exists():
        if shutil.which("bible") is None:
            return None
        out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
        verses = [line.split(" ", 1)[1] for line in out.splitlines() if " " in line]
        part = SCRIPTURE.with_suffix(".part")  # whole or not at all: a killed run leaves no half text behind
        part.write_text("".join(v + "\n" for v in verses))
        part.replace(SCRIPTURE)
    return str(SCRIPTURE)


def held_out(corpus, batch: BatchConfig):
    """The held-out split's batches as the benchmark scores them, and (head text, tail text) for PPMd."""
    v = corpus.vocab
    if corpus.offsets is None:
        train, val = split_stream(len(corpus.ids), batch)
        return (lambda w: eval_windows(Stream(corpus.ids, val), w, 1, v.pad_id)), \
            "".join(v.decode(corpus.ids[s:e]) for s, e in train), "".join(v.decode(corpus.ids[s:e]) for s, e in val)
    tr, va = split_records(corpus.num_records, batch)
    one = batch.replace(batch_size=1)
    return (lambda w: heldout_batches(corpus, one)), \
        "".join(corpus.record(i) + "\n" for i in sorted(tr)), "".join(corpus.record(i) + "\n" for i in sorted(va))


def measure(name: str, source: str, minutes: float, tmp: Path, flags: str = "") -> dict:
    """Train on one corpus for `minutes` (with `flags` beside the defaults) and score its held-out split every way
    (one log row)."""
    run = tmp / name
    command = ["charloom", "train", source, "--max-time", f"{minutes:g}m", *flags.split()]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command, "--out", str(run), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    train_s = time.perf_counter() - t0
    ck = charloom.load(run)
    configs = charloom.checkpoint.run_configs(run / "last.safetensors")
    batch = BatchConfig.from_dict(configs["batch"])
    corpus = charloom.load_corpus(charloom.CorpusConfig.from_dict(configs["corpus"]), vocab=ck.vocab)
    batches, head, tail = held_out(corpus, batch)
    cfg = EvalConfig()
    static = runs.as_saved(ck, batches(1024))
    adapted = adapt(ck.model, batches(cfg.adapt_segment), cfg.adapt_lr, cfg.adapt_decay, mixture=ck.mixture)
    counting = adapt(ck.model, batches(1024), 0.0, mixture=ck.mixture).bpc if ck.mixture else None
    ppmd, _ = ppmd_bpc(head, tail)
    return {"corpus": name, "minutes": minutes, "characters": len(head) + len(tail), "scored": static.characters,
            "hidden": ck.config.hidden_size, "head_hidden": ck.config.head_width, "batch": batch.batch_size, "seen": ck.info.get("characters_seen", 0),
            "precision": ck.info.get("precision"), "cpu": report.cpu_model(), "isa": report.isa(),
            "env": report.path_words(report.path_env()), "static": static.bpc,
            "alone": static.network_bpc if static.network_bpc is not None else static.bpc,
            "adapted": adapted.bpc, "adapted_network": adapted.network_bpc, "counting": counting, "ppmd": ppmd,
            "command": " ".join(command), "wall_minutes": train_s / 60, "date": datetime.date.today().isoformat()}


def table_row(r: dict) -> str:
    """A log row as a line of the section's table."""
    return report.row(r["corpus"], f"{r['characters']:,}", f"{r['scored']:,}",
                      f"{r['hidden']} wide, " + (f"batch {r['batch']}, " if r.get("batch") else "")
                      + f"{r['seen'] / 1e6:.1f} M characters, {report.cpu_of(r)}"
                      + (f" ({r['isa']})" if r.get("isa") else "") + f", {r['precision']}", f"{r['static']:.3f}",
                      f"{r['alone']:.3f}",
                      f"{r['adapted']:.3f}" + (f" ({r['adapted_network']:.3f})" if r["adapted_network"] else ""),
                      f"{r['counting']:.3f}" if r["counting"] else "", f"{r['ppmd']:.3f}",
                      f"{r['static'] - r['ppmd']:+.3f}", f"{r['adapted'] - r['ppmd']:+.3f}",
                      f"`{(r['env'] + ' ') if r.get('env') else ''}{r['command']}` ({r['wall_minutes']:.1f} min with "
                      "start and n-gram)", r["date"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--only", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    ap.add_argument("--flags", default="", help="charloom train flags beside the defaults, e.g. '--batch-size 16'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in sources(args.only).items():
            report.append_log(LOG, measure(name, source, args.minutes, Path(tmp), args.flags))
    body = section()
    report.write_section("corpora", body)
    print(body)


def section() -> str:
    """The section from the log's rows."""
    # per machine, and per command: a run with other flags stands beside the defaults' row
    newest = {(r["corpus"], r["minutes"], report.cpu_of(r), r.get("env", ""), r["command"]): r
              for r in report.read_log(LOG)}
    return "\n".join([
        "## Not Shakespeare alone: code, scripture and short records, beside PPMd",
        "",
        "Command: `python bench/corpora_bench.py --minutes N` (each run kept in `bench/corpora.jsonl`; the newest "
        "of each corpus, budget, CPU, kernel path and command shown; each row names its CPU and, where recorded, its "
        "kernel path; an AVX2-path row's command names the variables that held its kernels to AVX2). Machine of the "
        f"newest run: {report.machine()}, 2 threads.",
        "See the script's docstring for the splits and how each figure is made.",
        "",
        *report.table(["corpus", "characters", "held-out characters scored", "model", "charloom as saved",
                       "the network alone", "adapted while reading (network alone)",
                       "the network as trained, its n-gram counting as it reads", f"PPMd (`7z a {PPMD}`)",
                       "as saved - PPMd", "adapted - PPMd", "command", "date"],
                      [table_row(r) for _, r in sorted(newest.items())]),
    ])


if __name__ == "__main__":
    main()
