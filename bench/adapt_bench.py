"""Held-out bits per character, static and adapted while reading, beside the PPMd compressor.

    python bench/adapt_bench.py --minutes 10            # trains `charloom train shakespeare --max-time 10m` first
    python bench/adapt_bench.py --checkpoint runs/x     # or scores a run folder trained on the bundled Shakespeare
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/adapt_bench.py
                                                        # the same on the AVX2 path (its own section)

Held-out = the last 5% of the corpus (charloom's default split), scored whole, in order, state carried:
  static   the model file as it is, its network mixed with its n-gram (what `charloom eval` prints first),
           and the network alone beside it;
  adapted  dynamic evaluation (`charloom eval --adapt` with its defaults): each segment scored, then a
           gradient step on it, as a compressor keeps learning what it reads, the n-gram counting each
           character once predicted; and the network adapting alone beside it;
  PPMd     7-Zip's PPMd, order 8, 1 GB: bits = 8 x (archive of head+tail - archive of head) / tail characters,
           so it too learns the head and keeps adapting as it reads the tail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import runs  # noqa: E402

import charloom  # noqa: E402
import charloom.checkpoint  # noqa: E402  (the package imports its modules lazily)
from charloom.batching import eval_windows  # noqa: E402
from charloom.config import EvalConfig  # noqa: E402
from charloom.evaluation import adapt, evaluate  # noqa: E402

PPMD = "-m0=PPMd:o=8:mem=1g"


def archive_bytes(text: str, folder: Path, name: str) -> int:
    if shutil.which("7z") is None:  # the bench target installs it; a script run by hand may lack it
        raise SystemExit("PPMd needs 7-Zip's 7z on the PATH: `make bench` installs it (Debian package p7zip-full)")
    src, out = folder / f"{name}.txt", folder / f"{name}.7z"
    src.write_text(text, encoding="utf-8")
    subprocess.run(["7z", "a", PPMD, str(out), str(src)], check=True, stdout=subprocess.DEVNULL)
    return out.stat().st_size


def ppmd_bpc(head: str, tail: str) -> tuple[float, float]:
    """(PPMd's bits per tail character, seconds for both archives)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        both, alone = archive_bytes(head + tail, Path(tmp), "both"), archive_bytes(head, Path(tmp), "head")
    return 8 * (both - alone) / len(tail), time.perf_counter() - t0


def sweep(folder: Path, characters: int) -> None:
    """The sweep behind `--adapt-*`'s defaults: each setting scores the first `characters` of the held-out
    tail, adapted, against the static figure on the same characters; rows go to their own section."""
    from charloom.batching import Stream

    data, ck = runs.shakespeare(), charloom.load(folder)
    (start, end), = data.val.segments
    head = Stream(data.val.ids, [(start, min(end, start + characters))])
    pad = ck.vocab.pad_id
    static = evaluate(ck.model, eval_windows(head, 1024, 1, pad)).bpc
    grid = [(lr, seg, 0.0) for lr in (0.03, 0.1, 0.3) for seg in (16, 32, 64)] + [(0.1, 32, 0.001), (0.1, 32, 0.01)]
    rows = []
    for lr, seg, decay in grid:
        a = adapt(ck.model, eval_windows(head, seg, 1, pad), lr, decay).bpc
        rows.append(report.row(f"{lr:g}", seg, f"{decay:g}", f"{a:.4f}", f"{a - static:+.4f}"))
        print(rows[-1], flush=True)
    body = "\n".join([
        "## Dynamic evaluation: the sweep behind the defaults",
        "",
        f"Command: `python bench/adapt_bench.py --checkpoint RUN --sweep {characters}`, RUN a "
        f"`charloom train shakespeare --max-time 10m` run. Machine: {report.machine()}.",
        f"The first {characters:,} characters of the held-out tail; static: {static:.4f} bpc.",
        "",
        *report.table(["--adapt-lr", "--adapt-segment", "--adapt-decay", "adapted bpc", "vs static"], rows),
    ])
    report.write_section("adapt-sweep", body)
    print(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--checkpoint", help="score this run folder instead of training one")
    ap.add_argument("--sweep", type=int, metavar="N", help="with --checkpoint: sweep the adapt options on the first "
                                                          "N held-out characters instead")
    args = ap.parse_args()
    if args.sweep:
        return sweep(Path(args.checkpoint), args.sweep)
    data = runs.shakespeare()
    with tempfile.TemporaryDirectory() as tmp:
        command = f"charloom train shakespeare --max-time {args.minutes:g}m"
        if args.checkpoint:
            folder = Path(args.checkpoint)
        else:
            folder = Path(tmp) / "run"
            command = runs.train(args.minutes, folder)["command"]
        ck = charloom.load(folder)
        info, cfg = ck.info, EvalConfig()
        saved = charloom.checkpoint.load(folder / "last.safetensors").meta
        trained_in = saved["train"]["precision"]
        if args.checkpoint:  # what trained it, as far as its saved options tell
            command = f"charloom train {saved['corpus']['source']} --max-time {saved['train']['max_time'] or '10m'}"
        pad = ck.vocab.pad_id
        static = runs.as_saved(ck, eval_windows(data.val, 1024, 1, pad))
        alone = evaluate(ck.model, eval_windows(data.val, 1024, 1, pad))
        t0 = time.perf_counter()
        adapted = adapt(ck.model, eval_windows(data.val, cfg.adapt_segment, 1, pad), cfg.adapt_lr, cfg.adapt_decay,
                        mixture=ck.mixture)
        adapt_s = time.perf_counter() - t0
    (start, end), = data.val.segments
    ids = data.corpus.ids
    head, tail = ck.vocab.decode(ids[:start]), ck.vocab.decode(ids[start:end])
    ppmd, ppmd_s = ppmd_bpc(head, tail)
    mixed = " (the network and its n-gram)" if ck.mixture else ""
    rows = [report.row(f"charloom, static{mixed}", f"{static.bpc:.3f}", f"{static.characters:,}", command),
            *([report.row("charloom, static, the network alone", f"{alone.bpc:.3f}", f"{alone.characters:,}",
                          "`charloom eval --no-ngram`")] if ck.mixture else []),
            report.row(f"charloom, adapted while reading (lr {cfg.adapt_lr:g}, segments of {cfg.adapt_segment}, "
                       f"decay {cfg.adapt_decay:g}){mixed}", f"{adapted.bpc:.3f}", f"{adapted.characters:,}",
                       f"`charloom eval --adapt`, {adapt_s:.0f} s"),
            *([report.row("charloom, adapted while reading, the network alone", f"{adapted.network_bpc:.3f}",
                          f"{adapted.characters:,}", "the same run")] if adapted.network_bpc is not None else []),
            report.row("PPMd order 8 (7-Zip)", f"{ppmd:.3f}", f"{len(tail):,}", f"`7z a {PPMD}`, {ppmd_s:.0f} s")]
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    body = "\n".join([
        "## Held-out bpc: static, adapted while reading, and PPMd" + (f" ({capped} path)" if capped else ""),
        "",
        f"Command: `{report.path_words(report.path_env()) + ' ' if capped else ''}python bench/adapt_bench.py " +
        (f"--checkpoint {args.checkpoint}`." if args.checkpoint else f"--minutes {args.minutes:g}`."),
        f"Machine: {report.machine()}; the model trained in {trained_in}, {info.get('step', '?')} steps, "
        f"{info.get('characters_seen', 0):,} characters, {info.get('train_seconds', '?')} s; scoring in fp32.",
        "The last 5% of the bundled Shakespeare, whole, in order, state carried. See the script's docstring for "
        "how each figure is made; the adapted figure never replaces the static one.",
        "",
        *report.table(["system", "held-out bpc", "characters", "how"], rows),
    ])
    # one section per kernel path, so the native and the AVX2 figures stand side by side
    report.write_section(f"adapt-{capped.lower()}" if capped else "adapt", body)
    print(body)


if __name__ == "__main__":
    main()
