"""Killed mid-run: SIGKILL `charloom train` at random points, mid-save included, and check what it leaves.

    python bench/fuzz_kill.py [--kills 120] [--steps 40] [--save-share 0.4] [--encode-share 0.12]
                              [--encode-mb 32] [--seed 0]

Each episode is one run folder. Its first start is `charloom train TEXT ... --out RUN --max-steps STEPS` (a
hidden-32 LSTM saving every 5 steps, so saves are frequent); the start is killed with SIGKILL, then the next
start is what a user would type: `charloom train --out RUN --resume` when the run folder holds a resume file,
else the same command again. Up to three starts of an episode are killed in a row (so resumed runs are killed
too), and then one runs to its end. An encode episode trains on a corpus of --encode-mb MB with a cache
folder of its own, so that its first start encodes the corpus into the cache and can be killed doing so.

Kills land three ways: at a random delay (seeded, spread from the start of the command to its expected end);
aimed at a save (the run folder is polled, and the kill sent the instant a temporary file of `atomic.TMP_MARK`
appears, at a randomly chosen save of the run); aimed at the cache (sent at a random delay once the cache's
temporary folder appears). Where each kill landed is read from what the killed process left: its temporary
files (a save, a rewrite of metrics.jsonl, the start-up write check, the hash memo), the cache's temporary
folder, or a metrics line cut short.

After each kill: every model file present (model.safetensors, last.safetensors) must load with
`checkpoint.load`, the resume file must pass `checkpoint.load_run` (the field-by-field validation a resumed
run does), and every line of metrics.jsonl must be readable by the resume path (a line cut short may only
be the last). After the start that runs to its end: it exits 0, the files load, metrics.jsonl holds one line
per evaluation with rising steps up to the budget, and no file or folder with the temporary mark remains
in the run folder or the cache, neither one a killed process left nor any other.

Each start runs in a child forked from one process that has imported charloom (Python and torch start once,
so a kill's delay counts from the command's own start), with --threads 1 and --precision fp32. Exits
non-zero, after writing the section, when any check failed, printing each failure with its file.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from charloom import checkpoint  # noqa: E402
from charloom.atomic import TMP_MARK  # noqa: E402
from charloom.corpus import bundled  # noqa: E402
from charloom.trainer import _step_of  # noqa: E402

COMMAND = "python bench/fuzz_kill.py"
EVAL_EVERY = 5
METRICS = "metrics.jsonl"
POLL = 0.0002  # seconds between looks at the folder while aiming at a save

# the process every start is forked from: charloom and torch imported once; per line of stdin (the command line
# and where its output goes) it forks a child that runs `charloom ARGS`, prints the child's pid, and once the
# child has ended, its exit status (-9 when killed)
SERVER = r"""
import json, os, sys
import torch
import charloom.cli, charloom.trainer
sys.path.insert(0, sys.argv[1])  # bench/
from fuzz_files import cli_code
print("ready", flush=True)
for line in sys.stdin:
    args, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        code = cli_code(args)
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Starter:
    """Runs `charloom ARGS` in a child of the server and kills it on request."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, str(Path(__file__).resolve().parent)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.server.stdout.readline().strip() == "ready"
        self.count = 0

    def start(self, args: list[str]) -> Child:
        self.count += 1
        log = self.root / f"start-{self.count:04d}.log"
        self.server.stdin.write(json.dumps([args, str(log)]) + "\n")
        self.server.stdin.flush()
        pid = int(self.server.stdout.readline())
        return Child(self, pid, os.pidfd_open(pid), time.perf_counter(), log)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait()


@dataclass
class Child:
    starter: Starter
    pid: int
    pidfd: int  # signals reach this process even once its pid is reaped; readable once it has ended
    t0: float
    log: Path
    code: int | None = None
    seconds: float = 0.0

    def ended(self, timeout: float = 0.0) -> bool:
        return bool(select.select([self.pidfd], [], [], timeout)[0])

    def kill(self) -> bool:
        """SIGKILL; False when the command had already ended by itself."""
        if self.ended():
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def wait(self) -> int:
        self.code = int(self.starter.server.stdout.readline())
        self.seconds = time.perf_counter() - self.t0
        os.close(self.pidfd)
        return self.code

    def last_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return lines[-1][:300] if lines else ""


def temporaries(*folders: Path) -> set[Path]:
    """Every file or folder under `folders` whose name holds the temporary mark."""
    found = set()
    for folder in folders:
        for top, dirs, files in os.walk(folder):
            found.update(Path(top) / n for n in dirs + files if TMP_MARK in n)
    return found


def landed(child: Child, run: Path, cache: Path) -> str:
    """Where the kill found the process, from what it left behind."""
    mine = f"{TMP_MARK}{child.pid}"
    for p in sorted(temporaries(run)) + sorted(temporaries(cache)):  # the run folder's first
        if p.parent == run and p.name.endswith(mine):
            name = p.name[1:-len(mine)]
            return {checkpoint.RESUME_FILE: "saving last.safetensors",
                    checkpoint.MODEL_FILE: "saving model.safetensors",
                    METRICS: "rewriting metrics.jsonl (resume)",
                    "write-check": "start-up write check"}.get(name, "writing " + name)
        if p.is_dir() and p.parent == cache / "ids":
            return "encoding the corpus cache"
        if p.name.endswith(mine):
            return "writing the corpus's hash memo"
    metrics = run / METRICS
    if metrics.exists() and metrics.read_bytes()[-1:] not in (b"", b"\n"):
        return "appending metrics.jsonl"
    if not (run / checkpoint.RESUME_FILE).exists():
        return "before the first save"
    return "between saves"


MID_SAVE = ("saving last.safetensors", "saving model.safetensors", "rewriting metrics.jsonl (resume)")


def check_files(run: Path, where: str) -> list[str]:
    """The files a killed (or finished) run left: each model file loads, the resume file validates, and
    metrics.jsonl reads as the resume path reads it. One line per failure."""
    bad = []
    model, last, metrics = run / checkpoint.MODEL_FILE, run / checkpoint.RESUME_FILE, run / METRICS
    if model.exists():
        try:
            checkpoint.load(model)
        except Exception as e:  # noqa: BLE001 - any failure to load is what is counted
            bad.append(f"{where}: {model}: does not load ({type(e).__name__}: {str(e)[:200]})")
    if last.exists():
        try:
            checkpoint.load_run(last)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{where}: {last}: resume file refused ({type(e).__name__}: {str(e)[:200]})")
    if metrics.exists():
        try:
            text = metrics.read_text(errors="replace")
            lines = text.splitlines()
            steps = [_step_of(ln) for ln in lines]
        except Exception as e:  # noqa: BLE001
            bad.append(f"{where}: {metrics}: unreadable ({type(e).__name__}: {e})")
        else:
            # only a last line without its newline (a kill mid-append) may fail to read
            whole = steps if text.endswith("\n") else steps[:-1]
            torn = [i for i, s in enumerate(whole) if s == float("inf")]
            if torn:
                bad.append(f"{where}: {metrics}: line {torn[0] + 1} of {len(lines)} is not a metrics line "
                           f"({lines[torn[0]][:80]!r})")
    return bad


def check_finished(run: Path, steps: int, where: str) -> list[str]:
    """After a start that ran to its end: a model file, a resume file at the budget, one metrics line per
    evaluation with rising steps."""
    bad = check_files(run, where)
    for name in (checkpoint.MODEL_FILE, checkpoint.RESUME_FILE, METRICS):
        if not (run / name).exists():
            bad.append(f"{where}: {run / name}: missing after a run that finished")
    if bad:
        return bad
    step = checkpoint.load_run(run / checkpoint.RESUME_FILE)[1].progress.step
    if step != steps:
        bad.append(f"{where}: {run / checkpoint.RESUME_FILE}: at step {step}, not the budget's {steps}")
    got = [_step_of(ln) for ln in (run / METRICS).read_text(errors="replace").splitlines()]
    want = list(range(EVAL_EVERY, steps + 1, EVAL_EVERY)) + ([] if steps % EVAL_EVERY == 0 else [steps])
    if got != want:
        repeated = sorted({s for s in got if got.count(s) > 1})
        what = f"steps {repeated} appear more than once" if repeated else f"steps {got[:12]}"
        bad.append(f"{where}: {run / METRICS}: {what}; one line per evaluation would be steps {want[:12]}")
    return bad


@dataclass
class Kill:
    episode: int
    kind: str  # "train" | "encode"
    start: str  # "fresh" | "resume"
    aim: str  # "random" | "save" | "cache"
    seconds: float  # from the command's start to the kill
    landed: str


@dataclass
class Tally:
    kills: list[Kill] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unloadable: int = 0  # model or resume files that failed to load after a kill
    leftovers: set[Path] = field(default_factory=set)  # temporary entries that outlived the next start
    next_starts: Counter = field(default_factory=Counter)  # "resume"/"fresh" -> count of starts run to the end
    next_failures: list[str] = field(default_factory=list)
    finished_before_kill: int = 0
    episodes: int = 0


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.rng = random.Random(args.seed)
        self.small, self.big = root / "small.txt", root / "big.txt"
        text = lzma.decompress(bundled()["shakespeare"].path.read_bytes()).decode("utf-8")
        self.small.write_text(text[:60000])
        with open(self.big, "w") as f:
            while f.tell() < args.encode_mb * 2**20:
                f.write(text)
        self.cache = root / "cache"  # shared by the train episodes: their small corpus is encoded once
        self.starter = Starter(root)
        self.tally = Tally()
        self.times: dict[str, float] = {}
        self.seen_cache = False

    def fresh(self, run: Path, cache: Path, encode: bool) -> list[str]:
        text = self.big if encode else self.small
        return ["train", str(text), "--hidden", "32", "--embedding", "16", "--batch-size", "8", "--seq-len", "32",
                "--eval-every", str(EVAL_EVERY), "--eval-chars", "2000", "--sample-length", "0", "--no-progress",
                "--threads", "1", "--precision", "fp32", "--cache-dir", str(cache), "--out", str(run),
                "--max-steps", str(self.steps(encode)), *(["--val-fraction", "0.001"] if encode else [])]

    def steps(self, encode: bool) -> int:
        return EVAL_EVERY if encode else self.args.steps

    def next_command(self, run: Path, cache: Path, encode: bool) -> tuple[str, list[str]]:
        """What a user types after a kill: resume when there is a resume file, else the same command again."""
        if (run / checkpoint.RESUME_FILE).exists():
            return "resume", ["train", "--out", str(run), "--resume"]
        return "fresh", self.fresh(run, cache, encode)

    # ---- calibration: how long an uncut start takes, and when the cache's temporary folder lives -------
    def calibrate(self) -> None:
        run = self.root / "calibrate"
        child = self.starter.start(self.fresh(run, self.cache, False))  # encodes the small corpus once
        self.must_finish(child, "calibration")
        shutil.rmtree(run)
        child = self.starter.start(self.fresh(run, self.cache, False))
        self.must_finish(child, "calibration")
        self.times["train"] = child.seconds
        shutil.rmtree(run)
        cache = self.root / "cache-calibrate"
        child = self.starter.start(self.fresh(run, cache, True))
        appear = gone = None
        while not child.ended(0.001):
            now = time.perf_counter() - child.t0
            busy = encoding(cache)
            if busy and appear is None:
                appear = now
            if not busy and appear is not None and gone is None:
                gone = now
        self.must_finish(child, "calibration")
        self.times["encode"] = child.seconds
        # a cache folder too short-lived to be seen: random kills then spread over the whole start
        self.seen_cache = appear is not None
        self.times["cache_appear"] = appear if appear is not None else 0.0
        self.times["cache_life"] = (gone or child.seconds) - self.times["cache_appear"]
        shutil.rmtree(run)
        shutil.rmtree(cache)
        print(f"calibration: train {self.times['train']:.2f} s, encode run {self.times['encode']:.2f} s, "
              + (f"cache folder from {self.times['cache_appear']:.2f} s for {self.times['cache_life']:.2f} s"
                 if self.seen_cache else "cache folder not seen"), flush=True)

    def must_finish(self, child: Child, where: str) -> None:
        if child.wait() != 0:
            raise SystemExit(f"{where}: charloom train exited {child.code}: {child.last_line()}")

    # ---- one killed start --------------------------------------------------------------------------
    def killed_start(self, episode: int, kind: str, run: Path, cache: Path) -> Kill | None:
        """Start the next command and kill it as planned; None when it finished before the kill."""
        start, args = self.next_command(run, cache, kind == "encode")
        r = self.rng.random()
        if kind == "encode":
            aim = "cache" if r < 0.6 else "random"
        else:
            aim = "save" if r < self.args.save_share / (1 - self.args.encode_share) else "random"
        child = self.starter.start(args)
        hit = self.aim(child, aim, kind, start, run, cache)
        t = time.perf_counter() - child.t0
        code = child.wait()
        if not hit:
            self.tally.finished_before_kill += 1
            if code != 0:
                self.fail_next(start, child, f"episode {episode}: {' '.join(args)}")
            return None
        return Kill(episode, kind, start, aim, t, landed(child, run, cache))

    def aim(self, child: Child, aim: str, kind: str, start: str, run: Path, cache: Path) -> bool:
        if aim == "random":
            span = self.times[kind] * (0.7 if start == "resume" else 1.0)
            if kind == "encode":
                span = self.times["cache_appear"] + self.times["cache_life"] * 1.2
            if child.ended(self.rng.uniform(0.0, span)):
                return False
            return child.kill()
        if aim == "cache":
            while not encoding(cache):
                if child.ended(0.001):
                    return False
            if child.ended(self.rng.uniform(0.0, self.times["cache_life"])):
                return False
            return child.kill()
        # a save: the n-th time a temporary file of this process appears in the run folder (the start-up
        # write check aside)
        mine = f"{TMP_MARK}{child.pid}"
        target, seen, present = self.rng.randrange(self.saves_left(run)), 0, False
        while True:
            now = any(n.endswith(mine) and not n.startswith(".write-check") for n in _names(run))
            if now and not present:
                if seen == target:
                    return child.kill()
                seen += 1
            present = now
            if child.ended(POLL):
                return False

    def saves_left(self, run: Path) -> int:
        """Temporary files a start will still write: the resume file at each evaluation left, and about as
        many model files (written when validation improved)."""
        done = 0
        if (run / checkpoint.RESUME_FILE).exists():
            try:
                done = checkpoint.load_run(run / checkpoint.RESUME_FILE)[1].progress.step
            except Exception:  # noqa: BLE001 - counted by the checks; aim at the first save
                return 1
        return max(1, 2 * ((self.args.steps - done) // EVAL_EVERY))

    def fail_next(self, start: str, child: Child, where: str) -> None:
        line = child.last_line()
        self.tally.next_failures.append(f"{where}: exited {child.code}: {line}")
        self.tally.violations.append(f"{where}: the next start ({start}) exited {child.code}: {line}")

    # ---- an episode: kills in a row, then a start that runs to its end ------------------------------
    def episode(self, episode: int, kind: str, chain: int) -> None:
        run = self.root / f"run-{episode:03d}"
        cache = self.root / f"cache-{episode:03d}" if kind == "encode" else self.cache
        encode = kind == "encode"
        left_by_kills: set[Path] = set()
        kills = 0
        for _ in range(chain * 3):  # starts that finish before their kill do not count towards the chain
            if kills == chain:
                break
            k = self.killed_start(episode, kind, run, cache)
            if k is None:
                continue
            kills += 1
            self.tally.kills.append(k)
            bad = check_files(run, f"episode {episode}, kill {kills} ({k.start} start, {k.landed}, "
                                   f"{k.seconds:.3f} s)")
            self.tally.unloadable += sum(1 for b in bad if "safetensors" in b)
            self.tally.violations += bad
            left_by_kills |= temporaries(run, cache)
            print(f"  kill {len(self.tally.kills):3d}: episode {episode} {kind} {k.start} start, aimed {k.aim}, "
                  f"at {k.seconds:6.3f} s: {k.landed}" + (f"; {len(bad)} failed check(s)" if bad else ""),
                  flush=True)
        start, args = self.next_command(run, cache, encode)
        child = self.starter.start(args)
        where = f"episode {episode}, the next start ({start})"
        if child.wait() != 0:
            self.fail_next(start, child, where)
        else:
            self.tally.next_starts[start] += 1
            bad = check_finished(run, self.steps(encode), where)
            self.tally.unloadable += sum(1 for b in bad if "safetensors:" in b and "missing" not in b)
            self.tally.violations += bad
        remaining = temporaries(run, cache)
        for p in sorted(remaining):
            why = "left by a kill" if p in left_by_kills else "left by the start that ran to its end"
            self.tally.violations.append(f"{where}: {p}: temporary {'folder' if p.is_dir() else 'file'} "
                                         f"still there after the next start ({why})")
        self.tally.leftovers |= remaining
        self.tally.episodes += 1
        shutil.rmtree(run, ignore_errors=True)
        if cache != self.cache:
            shutil.rmtree(cache, ignore_errors=True)

    def run(self) -> None:
        self.calibrate()
        episode = 0
        while len(self.tally.kills) < self.args.kills:
            episode += 1
            kind = "encode" if self.rng.random() < self.args.encode_share else "train"
            chain = 1 if kind == "encode" else self.rng.choice((1, 1, 2, 3))
            self.episode(episode, kind, min(chain, self.args.kills - len(self.tally.kills)))


def encoding(cache: Path) -> bool:
    """A temporary folder in the cache: a corpus is being encoded."""
    return any(TMP_MARK in n for n in _names(cache / "ids"))


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def summary(b: Bench, wall: float) -> str:
    t, args = b.tally, b.args
    kills = t.kills
    where = Counter(k.landed for k in kills)
    mid_save = sum(where[w] for w in MID_SAVE)
    encode = where["encoding the corpus cache"]
    resumed = sum(k.start == "resume" for k in kills)
    figures = [
        report.row("kills (SIGKILL)", len(kills)),
        report.row("of which landed mid-save (a temporary file of the killed process in the run folder)", mid_save),
        report.row("of which landed while the corpus cache was being encoded", encode),
        report.row("of which killed a resumed run", resumed),
        report.row("model or resume files that did not load after a kill (must be 0)", t.unloadable),
        report.row("temporary files or folders left after the next start (must be 0)", len(t.leftovers)),
        report.row("next starts run to the end / that failed", f"{sum(t.next_starts.values())} / "
                                                              f"{len(t.next_failures)}"),
        report.row("failed checks in all (must be 0)", len(t.violations)),
        report.row("starts that finished before their kill (not counted)", t.finished_before_kill),
        report.row("wall time", f"{wall:.0f} s"),
    ]
    aims = Counter(k.aim for k in kills)
    rows = [report.row(w, n, *(sum(1 for k in kills if k.landed == w and k.aim == a) for a in
                                ("random", "save", "cache"))) for w, n in where.most_common()]
    lines = [
        "## Killed mid-run: nothing unloadable, nothing left over",
        "",
        f"Command: `{COMMAND} --kills {args.kills} --steps {args.steps} --save-share {args.save_share:g} "
        f"--encode-share {args.encode_share:g} --encode-mb {args.encode_mb:g} --seed {args.seed}`.",
        f"Machine: {report.machine()}.",
        f"{t.episodes} run folders; each start is `charloom train` (a hidden-32 LSTM, {args.steps} steps, saving "
        f"every {EVAL_EVERY}; an encode episode trains {EVAL_EVERY} steps on a {args.encode_mb:g} MB corpus with "
        f"a cache folder of its own) in a child forked from one process that had imported charloom, killed "
        f"with SIGKILL at a seeded random delay ({aims['random']}), the instant a temporary file appeared at a "
        f"chosen save ({aims['save']}), or while the cache's temporary folder existed ({aims['cache']}). Up to "
        "three starts in a row were killed; then the next start, what a user types (`charloom train --out RUN "
        "--resume` where a resume file is, else the same command), ran to its end. After each kill every model "
        "and resume file present was loaded (`checkpoint.load`, `checkpoint.load_run`) and metrics.jsonl read as "
        "a resume reads it; after the next start, the run folder and the cache were searched for names holding "
        f"`{TMP_MARK}`. An uncut start took {b.times['train']:.2f} s (the encode episode's "
        f"{b.times['encode']:.2f} s, " + (f"its cache folder living {b.times['cache_life']:.2f} s)." if b.seen_cache
                                          else "its cache folder too short-lived to be seen).") + " Wall times "
        "carry the load of other work on the machine.",
        "",
        *report.table(["figure", "value"], figures),
        "",
        "Where the kills landed, as read from what the killed process left:",
        "",
        *report.table(["landed", "kills", "aimed at random", "aimed at a save", "aimed at the cache"], rows),
        "",
        f"Next starts that ran to the end: {t.next_starts['resume']} resumed, {t.next_starts['fresh']} started "
        f"again (no resume file yet); all must exit 0.",
    ]
    if t.violations:
        shown = sorted(set(t.violations), key=t.violations.index)
        lines += ["", f"Failed checks ({len(t.violations)}; the first 10):", "",
                  *(f"- {v.replace(str(b.root), 'TMP')}" for v in shown[:10])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=120, help="SIGKILLs in all")
    ap.add_argument("--steps", type=int, default=40, help="the budget of a train episode (a save every 5 steps)")
    ap.add_argument("--save-share", type=float, default=0.4, help="share of the kills aimed at a save")
    ap.add_argument("--encode-share", type=float, default=0.12, help="share of episodes that encode a corpus")
    ap.add_argument("--encode-mb", type=float, default=32, help="size of the corpus an encode episode encodes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="charloom-kill-"))
    t0 = time.perf_counter()
    bench = Bench(args, root)
    try:
        bench.run()
    finally:
        bench.starter.close()
        if args.keep:
            print(f"work folder: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    body = summary(bench, time.perf_counter() - t0)
    report.write_section("fuzz-kill", body)
    print(body)
    for v in bench.tally.violations:
        print("FAILED:", v.replace(str(root), "TMP"), file=sys.stderr)
    if bench.tally.violations:
        sys.exit(1)


if __name__ == "__main__":
    main()
