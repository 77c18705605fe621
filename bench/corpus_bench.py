"""Corpus benchmark: time and peak memory to encode and batch the bundled Shakespeare corpus, and a
1 GB generated corpus encoded with bounded memory.

    python bench/corpus_bench.py [--gigabytes 1.0] [--repeats 3]

Each measurement runs in a fresh process (so peak RSS is that of the job alone) against its own cache
folder: "cold" reads and encodes the text, "warm" maps the cached ids.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

COMMAND = "python bench/corpus_bench.py"


def worker(args: argparse.Namespace) -> None:
    """One measured job in this process; prints a JSON line."""
    import numpy as np

    import charloom
    from charloom.batching import prepare

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    corpus = charloom.load_corpus(charloom.CorpusConfig(source=args.source, cache_dir=args.cache,
                                                        records=args.records or None))
    load_s = time.perf_counter() - t0
    out = {"load_s": load_s, "chars": int(len(corpus.ids)), "base_rss": base}
    if args.batches:
        data = prepare(corpus, charloom.BatchConfig(batch_size=64, seq_len=128, order=args.order))
        it = iter(data.train)
        next(it)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 2.0:
            b = next(it)
            n += b.x.numel()
        out["batch_chars_per_s"] = n / (time.perf_counter() - t0)
        _ = np  # numpy is imported by charloom anyway
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


def measure(source: str, cache: Path, batches: bool = False, order: str = "shuffle", records: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--source", source, "--cache", str(cache), "--order", order]
    if batches:
        cmd.append("--batches")
    if records:
        cmd.append("--records")
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def make_big_corpus(path: Path, gigabytes: float) -> int:
    """A text file of about `gigabytes` GB: the Shakespeare corpus repeated, written 5 MB at a time."""
    from charloom.corpus import bundled, read_chunks

    block = "".join(read_chunks(bundled()["shakespeare"].path)).encode()
    target = int(gigabytes * 1e9)
    written = 0
    with open(path, "wb") as f:
        while written < target:
            piece = block[: target - written]
            f.write(piece)
            written += len(piece)
    return written


def _records_rows(tmp: Path, repeats: int) -> list:
    """A million short records (one name a line), read cold as records and as one continuous text."""
    names = tmp / "names.txt"
    names.write_text("".join(f"name{i % 1000}\n" for i in range(1_000_000)))
    rows = []
    for records, what in ((True, "as records"), (False, "as one text")):
        runs = [measure(str(names), tmp / f"names{records}{r}", records=records) for r in range(repeats)]
        rows.append(report.row(f"1,000,000 short lines ({runs[0]['chars'] / 1e6:.1f} M chars), cold, {what}",
                               f"{report.spread([x['load_s'] for x in runs])} s",
                               f"{report.spread([x['peak_rss'] / 1e6 for x in runs], '{:.0f}')} MB"))
    return rows


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source")
    ap.add_argument("--cache")
    ap.add_argument("--order", default="shuffle")
    ap.add_argument("--batches", action="store_true")
    ap.add_argument("--records", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gigabytes", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="charloom-bench-"))
    try:
        cold, warm, rss_cold, rss_warm, base = [], [], [], [], []
        for r in range(args.repeats):
            cache = tmp / f"cache{r}"
            c = measure("shakespeare", cache)
            cold.append(c["load_s"]); rss_cold.append(c["peak_rss"]); base.append(c["base_rss"])
            w = measure("shakespeare", cache)
            warm.append(w["load_s"]); rss_warm.append(w["peak_rss"])
        chars = c["chars"]
        rows.append(report.row(f"Shakespeare ({chars / 1e6:.2f} M chars), cold: read, count, encode, cache",
                               f"{report.spread(cold)} s", f"{report.spread([x / 1e6 for x in rss_cold], '{:.0f}')} MB"))
        rows.append(report.row("Shakespeare, warm: map the cached ids", f"{report.spread(warm)} s",
                               f"{report.spread([x / 1e6 for x in rss_warm], '{:.0f}')} MB"))
        rates = {o: [measure("shakespeare", tmp / "cache0", True, o)["batch_chars_per_s"] for _ in range(args.repeats)]
                 for o in ("shuffle", "contiguous")}
        for o, v in rates.items():
            rows.append(report.row(f"Shakespeare batches, {o} order (64 x 128)",
                                   f"{report.spread([x / 1e6 for x in v])} M chars/s", ""))

        big = tmp / "big.txt"
        size = make_big_corpus(big, args.gigabytes)
        bc = measure(str(big), tmp / "bigcache")
        bw = [measure(str(big), tmp / "bigcache")["load_s"] for _ in range(args.repeats)]
        rows.append(report.row(f"generated {size / 1e9:.2f} GB text, cold: hash, count, encode, cache",
                               f"{bc['load_s']:.1f} s ({size / bc['load_s'] / 1e6:.0f} MB/s, n=1)", mb(bc["peak_rss"])))
        rows.append(report.row(f"generated {size / 1e9:.2f} GB text, warm", f"{report.spread(bw)} s", ""))
        rows += _records_rows(tmp, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    body = "\n".join([
        "## Corpus: encode and batch",
        "",
        f"Command: `{COMMAND} --gigabytes {args.gigabytes:g} --repeats {args.repeats}` (`make bench`).",
        f"Machine: {report.machine()}.",
        "Each figure is median (min-max) over fresh processes; peak memory is the process's peak RSS, which includes "
        f"about {statistics_median(base) / 1e6:.0f} MB for the Python interpreter with torch and numpy imported.",
        "",
        *report.table(["job", "time", "peak memory"], rows),
        "",
        f"The {size / 1e9:.2f} GB corpus is read in 4 MiB pieces and its ids written sequentially: peak RSS "
        f"{bc['peak_rss'] / 1e6:,.0f} MB is {bc['peak_rss'] / size:.0%} of the corpus size, "
        f"{(bc['peak_rss'] - bc['base_rss']) / 1e6:,.0f} MB above the interpreter's.",
    ])
    report.write_section("corpus", body)
    print(body)


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


if __name__ == "__main__":
    main()
