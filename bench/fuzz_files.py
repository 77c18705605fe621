"""Hostile model files: a corpus of damaged and forged files, each given to charloom's command line.

    python bench/fuzz_files.py [--flips 48] [--data-flips 16] [--timeout 180] [--seed 0] [--fork]

Kinds: sizes in the config that its tensors do not have; JSON that Python's parser cannot take (deep
nesting, integers of thousands of digits, repeated keys, headers too large); vocabularies of lone surrogates
or repeated characters; weights of another dtype or not finite; what is not a regular file (a FIFO,
/dev/zero, a 64 GB sparse file with a valid header); files whose unpickling would run code; random single-bit
flips over the header and over the tensor bytes; damaged resume headers. Forged files carry digests that
match them, as an attacker would write them, so each reaches the check it is about.

Each file goes to `python -m charloom sample --checkpoint FILE --length 5` (a resume file, in its run folder,
to `charloom train --out FOLDER --resume`) in a fresh process (--fork: in a child forked from one process
that has imported charloom, so Python and torch start once) with a time limit. A run is a one-line refusal
(non-zero exit, one stderr line naming the file, no traceback), a traceback, a hang (killed at the limit), or
a silent load (exit 0). The pickled payloads create a marker file when unpickled: it must never appear. Valid files
(a model file, one from before the header digest, a resume file) run alongside as controls and must load.
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import json
import os
import pickle
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

import charloom  # noqa: E402
from charloom import checkpoint, ngram  # noqa: E402
from charloom.config import ModelConfig  # noqa: E402
from charloom.model import CharRNN  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

COMMAND = "python bench/fuzz_files.py"
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 8


@dataclass
class Case:
    kind: str
    name: str
    path: Path  # the file; for a resume case, its run folder
    expect: str = "refuse"  # "load" for the controls
    resume: bool = False


class Forge:
    """Writes the corpus's files into one folder, from a good model file and a good resume file."""

    def __init__(self, root: Path, marker: Path) -> None:
        self.root, self.marker, self.cases = root, marker, []
        vocab = Vocab.build(TEXT)
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(cell="lstm", num_layers=2, hidden_size=16, embedding=8, vocab_size=len(vocab)))
        self.good = checkpoint.save(root / "good.safetensors", model, vocab, records=False, info={"step": 0})
        (root / "play.txt").write_text(TEXT)
        self.run = root / "run"
        charloom.train(source=str(root / "play.txt"), out=str(self.run), order="contiguous", max_steps=2,
                       batch_size=2, seq_len=16, hidden_size=8, num_layers=1, embedding=4, eval_every=0,
                       sample_length=0, progress=False, cache_dir=str(root / "cache"))

    def add(self, kind: str, name: str, data: bytes | None = None, **options) -> None:
        slug = "".join(c if c.isalnum() else "-" for c in kind)
        path = options.pop("path", None) or self.root / f"{slug}-{len(self.cases):03d}.safetensors"
        if data is not None:
            path.write_bytes(data)
        self.cases.append(Case(kind, name, path, **options))

    def parts(self, source: Path | None = None) -> tuple[dict, dict]:
        """(tensors, header fields without the digests) of a good file."""
        blob = (source or self.good).read_bytes()
        meta = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
        tensors = {k: v.clone() for k, v in st_load(blob).items()}
        return tensors, {k: v for k, v in meta.items() if k not in (checkpoint.DIGEST, checkpoint.FULL_DIGEST)}

    def forged(self, change, source: Path | None = None, digests: bool = True) -> bytes:
        """A good file with change(meta, tensors) applied, and (digests) both digests made to match."""
        tensors, meta = self.parts(source)
        change(meta, tensors)
        blob = st_save(tensors, metadata=meta)
        if not digests:
            return blob
        n = int.from_bytes(blob[:8], "little")
        table = {k: v for k, v in json.loads(blob[8:8 + n]).items() if k != "__metadata__"}
        plain = hashlib.sha256(blob[8 + n:]).hexdigest()
        return st_save(tensors, metadata={**meta, checkpoint.DIGEST: plain,
                                          checkpoint.FULL_DIGEST: checkpoint._full_digest(meta, table, plain)})

    def resume(self, name: str, change) -> None:
        folder = self.root / f"resume-{len(self.cases):03d}"
        shutil.copytree(self.run, folder)
        last = folder / checkpoint.RESUME_FILE
        last.write_bytes(self.forged(change, source=self.run / checkpoint.RESUME_FILE))
        self.add("resume header", name, path=folder, resume=True)


def cli_code(args: list[str]) -> int:
    """charloom's command line run in this process, as the exit code `python -m charloom ARGS` would give:
    a traceback is printed to stderr as the interpreter would print it."""
    try:
        code = charloom.cli.main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def field(name: str, text: str):
    return lambda meta, tensors: meta.update({name: text})


def merged(name: str, **changes):
    return lambda meta, tensors: meta.update({name: json.dumps({**json.loads(meta[name]), **changes})})


def deep(n: int) -> str:
    return "[" * n + "]" * n


def sizes_and_json(f: Forge) -> None:
    for k, v in [("hidden_size", 20000), ("hidden_size", 30000), ("hidden_size", 10**9), ("num_layers", 10**6),
                 ("num_layers", 200), ("embedding", 10**5), ("vocab_size", 10**7), ("hidden_size", -5),
                 ("hidden_size", 0), ("cell", "transformer"), ("dropout", 1e400)]:
        f.add("sizes", f"config {k} {v:g}" if isinstance(v, float) else f"config {k} {v}",
              f.forged(merged("config", **{k: v})))
    for name in ("config", "vocab", "info", "extra", "records"):
        f.add("json", f"{name}: nested 100,000 deep", f.forged(field(name, deep(100000))))
    for name, text in [("config", '{"hidden_size": ' + "9" * 5000 + "}"), ("info", '{"a": ' + "7" * 5000 + "}"),
                       ("vocab", '{"version": ' + "1" * 5000 + "}"), ("records", "1" * 5000),
                       ("config", '{"cell": "gru", "cell": "lstm"}'), ("info", "NaN")]:
        f.add("json", f"{name}: {text[:24]}...", f.forged(field(name, text)))
    blob = f.good.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    head, data = blob[8:8 + n], blob[8 + n:]
    for name, raw in [("header nested deep", b'{"x":' + deep(100000).encode() + b"," + head[1:]),
                      ("header as UTF-16", head.decode().encode("utf-16")),
                      ("header with invalid UTF-8", head[:-2] + b"\xff}"),
                      ("header with NaN", head[:-1] + b',"y":NaN}'),
                      ("header of 200,000 values", head[:-1] + b',"y":[' + b"0," * 200000 + b"0]}"),
                      ("header of 17 MB", head + b" " * (17 * 2**20))]:
        f.add("json", name, len(raw).to_bytes(8, "little") + raw + data)
    f.add("json", "header length 2**63", (2**63).to_bytes(8, "little") + head + data)


def vocab_and_weights(f: Forge) -> None:
    _, meta = f.parts()
    chars = json.loads(meta["vocab"])["chars"]
    for name, changes in [("lone surrogates", {"chars": "".join(chr(0xD800 + i) for i in range(len(chars)))}),
                          ("a repeated character", {"chars": "e" * len(chars)}),
                          ("one character fewer", {"chars": chars[1:]}), ("chars as a list", {"chars": list(chars)}),
                          ("lower 'yes'", {"lower": "yes"}), ("an unknown field", {"casing": 1}),
                          ("other specials", {"specials": ["<s>"]}), ("unknown policy", {"unknown": {"a": 1}})]:
        f.add("vocabulary", name, f.forged(merged("vocab", **changes)))
    f.add("vocabulary", "a repeated key", f.forged(field("vocab", meta["vocab"][:-1] + ', "chars": "ab"}')))
    for dtype in (torch.int8, torch.uint8, torch.int64, torch.bool, torch.float16, torch.bfloat16, torch.float64):
        f.add("weights", f"head weight as {str(dtype)[6:]}",
              f.forged(lambda m, t, d=dtype: t.update({"model.head.weight": t["model.head.weight"].to(d)})))
    for value in (float("nan"), float("inf"), float("-inf")):
        f.add("weights", f"all {value}", f.forged(lambda m, t, v=value: t["model.rnn.weight_hh_l0"].fill_(v)))
    f.add("weights", "one NaN", f.forged(lambda m, t: t["model.head.bias"].__setitem__(3, float("nan"))))
    f.add("weights", "a missing tensor", f.forged(lambda m, t: t.pop("model.head.bias")))
    f.add("weights", "a tensor too many", f.forged(lambda m, t: t.update({"model.rnn.weight_hh_l9": torch.ones(4)})))
    f.add("weights", "a transposed weight", f.forged(lambda m, t: t.update(
        {"model.head.weight": t["model.head.weight"].t().contiguous()})))


def ngram_fields(f: Forge) -> None:
    """A model with an n-gram of its training text, its fields and tensors made hostile (the good one loads)."""
    vocab = Vocab.build(TEXT)
    ids = torch.from_numpy(vocab.encode_array(TEXT).astype(np.int64)).to(torch.uint8)
    good = {"ngram.ids": ids, "ngram.weights": torch.full((11, *ngram.SHAPE), 0.5),
            "ngram.reading": torch.full((11, *ngram.SHAPE), 0.4),
            "ngram.exponents": torch.tensor(ngram.LINEAR, dtype=torch.float32).repeat(11, 1)}

    def with_ngram(tensors: dict | None = None, spec: object = None, drop: str = ""):
        def change(meta, t):
            t.update({**good, **(tensors or {})})
            t.pop(drop, None)
            meta["extra"] = json.dumps({"ngram": {"order": 10, "beta": 4.0} if spec is None else spec})
        return change

    f.add("controls", "a model with its n-gram", f.forged(with_ngram()), expect="load")
    for name, spec in [("order 10**9", {"order": 10**9, "beta": 4.0}), ("order 0", {"order": 0, "beta": 4.0}),
                       ("order as text", {"order": "10", "beta": 4.0}), ("beta 0", {"order": 10, "beta": 0}),
                       ("beta 1e400", {"order": 10, "beta": 1e400}), ("no beta", {"order": 10}),
                       ("spec a list", [10, 4.0]), ("an extra key", {"order": 10, "beta": 4.0, "x": 1})]:
        f.add("n-gram", name, f.forged(with_ngram(spec=spec)))
    big = torch.zeros(ngram.MAX_CHARS + 1, dtype=torch.uint8)
    many = torch.zeros(ngram.MAX_PAIRS // 16 + 1, dtype=torch.uint8)
    for name, tensors, spec in [
            ("ids over the limit", {"ngram.ids": big}, None),
            ("order x ids over the limit", {"ngram.ids": many, "ngram.weights": torch.zeros(17, *ngram.SHAPE)},
             {"order": 16, "beta": 4.0}),
            ("ids as floats", {"ngram.ids": ids.float()}, None), ("ids as int64", {"ngram.ids": ids.long()}, None),
            ("ids outside the vocabulary", {"ngram.ids": torch.full((50,), 250, dtype=torch.uint8)}, None),
            ("negative ids", {"ngram.ids": torch.full((50,), -3, dtype=torch.int16)}, None),
            ("ids as a matrix", {"ngram.ids": ids[:100].reshape(10, 10)}, None),
            ("weights NaN", {"ngram.weights": torch.full((11, *ngram.SHAPE), float("nan"))}, None),
            ("weights 2", {"ngram.weights": torch.full((11, *ngram.SHAPE), 2.0)}, None),
            ("weights of another order", {"ngram.weights": torch.full((5, *ngram.SHAPE), 0.5)}, None),
            ("reading weights -1", {"ngram.reading": torch.full((11, *ngram.SHAPE), -1.0)}, None),
            ("reading weights as float16", {"ngram.reading": torch.full((11, *ngram.SHAPE), 0.5).half()}, None),
            ("reading weights of another order", {"ngram.reading": torch.full((5, *ngram.SHAPE), 0.5)}, None),
            ("last layer's powers NaN", {"ngram.exponents": torch.full((11, ngram.EXPONENTS), float("nan"))}, None),
            ("last layer's powers -1", {"ngram.exponents": torch.full((11, ngram.EXPONENTS), -1.0)}, None),
            ("last layer's powers 1e30", {"ngram.exponents": torch.full((11, ngram.EXPONENTS), 1e30)}, None),
            ("last layer's powers as float64", {"ngram.exponents": torch.ones(11, ngram.EXPONENTS).double()}, None),
            ("last layer of another order", {"ngram.exponents": torch.ones(5, ngram.EXPONENTS)}, None),
            ("last layer of another width", {"ngram.exponents": torch.ones(11, ngram.EXPONENTS + 4)}, None),
            ("last layer as one row", {"ngram.exponents": torch.ones(ngram.EXPONENTS)}, None),
            ("a tensor of no known name", {"ngram.counts": torch.zeros(10)}, None)]:
        f.add("n-gram", name, f.forged(with_ngram(tensors, spec)))
    f.add("n-gram", "the field without its ids", f.forged(with_ngram(drop="ngram.ids")))
    f.add("controls", "a model with its n-gram, from before the weights for reading",
          f.forged(with_ngram(drop="ngram.reading")), expect="load")
    f.add("controls", "a model with its n-gram, from before the last layer",
          f.forged(with_ngram(drop="ngram.exponents")), expect="load")
    f.add("n-gram", "the tensors without the field", f.forged(lambda m, t: t.update(good)))


class Payload:
    """Unpickled, it creates the marker file: proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def not_files_and_payloads(f: Forge) -> None:
    fifo = f.root / "fifo.safetensors"
    os.mkfifo(fifo)
    f.add("not a regular file", "a FIFO", path=fifo)
    f.add("not a regular file", "/dev/zero", path=Path("/dev/zero"))
    f.add("not a regular file", "/dev/null", path=Path("/dev/null"))
    (f.root / "zero-link.safetensors").symlink_to("/dev/zero")
    f.add("not a regular file", "a link to /dev/zero", path=f.root / "zero-link.safetensors")
    good = f.good.read_bytes()
    for name, size in [("64 GB sparse, valid header", 64 * 2**30), ("one byte more", len(good) + 1)]:
        path = f.root / f"sparse-{size}.safetensors"
        path.write_bytes(good)
        os.truncate(path, size)
        f.add("not a regular file", name, path=path)
    for cut in (0, 7, 8, 100, len(good) // 2, len(good) - 1):
        f.add("truncated", f"cut at {cut} bytes", good[:cut])
    payload = Payload(f.marker)
    torch.save({"model": payload}, f.root / "torch-save.safetensors")
    f.add("code", "torch.save of a payload", path=f.root / "torch-save.safetensors")
    f.add("code", "torch.save as .pt", (f.root / "torch-save.safetensors").read_bytes(), path=f.root / "m.pt")
    f.add("code", "a raw pickle", pickle.dumps(payload))
    f.add("code", "a pickle in the config field", f.forged(field("config", pickle.dumps(payload).hex())))
    f.add("code", "a pickle after a valid header", good + pickle.dumps(payload))


def flips(f: Forge, rng: random.Random, header: int, data: int) -> None:
    good = f.good.read_bytes()
    n = 8 + int.from_bytes(good[:8], "little")
    for at in rng.sample(range(n), header) + rng.sample(range(n, len(good)), data):
        blob = bytearray(good)
        bit = rng.randrange(8)
        blob[at] ^= 1 << bit
        f.add("bit flip: " + ("header" if at < n else "data"), f"byte {at} bit {bit}", bytes(blob))


def resume_headers(f: Forge) -> None:
    def extra(**changes):
        return merged("extra", **changes)
    f.resume("extra is a number", field("extra", "5"))
    f.resume("extra is a string", field("extra", '"progress optimizer corpus batch train"'))
    f.resume("no optimizer", lambda m, t: m.update(extra=json.dumps(
        {k: v for k, v in json.loads(m["extra"]).items() if k != "optimizer"})))
    f.resume("progress step 'seven'", lambda m, t: m.update(extra=json.dumps(
        {**(e := json.loads(m["extra"])), "progress": {**e["progress"], "step": "seven"}})))
    f.resume("param groups of one parameter", extra(optimizer=[{"params": [0]}]))
    f.resume("exp_avg as int8", lambda m, t: t.update({"optim.0.exp_avg": t["optim.0.exp_avg"].to(torch.int8)}))
    f.resume("exp_avg NaN", lambda m, t: t["optim.1.exp_avg"].fill_(float("nan")))
    f.resume("exp_avg_sq negative", lambda m, t: t["optim.1.exp_avg_sq"].fill_(-1.0))
    f.resume("carried state of another batch", lambda m, t: t.update({"carry.0.r0": torch.zeros(1, 5, 8)}))
    f.resume("carried state in float64", lambda m, t: t.update({"carry.1.r0": t["carry.1.r0"].double()}))
    f.resume("CUDA RNG state in float32", lambda m, t: t.update({"rng.cuda.r0": torch.zeros(4)}))
    f.resume("no RNG state", lambda m, t: t.pop("rng.torch.r0"))
    f.resume("trained weights NaN", lambda m, t: t["weights.head.bias"].fill_(float("nan")))
    f.resume("an unexpected tensor", lambda m, t: t.update({"surprise": torch.zeros(1)}))
    f.resume("batch options a list", field("extra", json.dumps({**json.loads(f.parts(
        f.run / checkpoint.RESUME_FILE)[1]["extra"]), "batch": [1, 2]})))


def controls(f: Forge) -> None:
    f.add("controls", "the good model file", path=f.good, expect="load")
    tensors, meta = f.parts()
    blob = st_save(tensors, metadata=meta)
    plain = hashlib.sha256(blob[8 + int.from_bytes(blob[:8], "little"):]).hexdigest()
    f.add("controls", "a file from before the header digest",
          st_save(tensors, metadata={**meta, checkpoint.DIGEST: plain}), expect="load")
    folder = f.root / "resume-control"
    shutil.copytree(f.run, folder)
    f.add("controls", "the resume file", path=folder, expect="load", resume=True)


# `python -m charloom` that reports what its command cost once Python and torch are up: wall and CPU seconds,
# and peak RSS as VmHWM, which counts this process alone (the ru_maxrss a parent reads for a child starts at the
# parent's own size when a large process forks)
COST = r"""
import atexit, json, runpy, sys, time
out = sys.argv.pop(1)
import charloom.checkpoint, charloom.cli  # the package imports lazily: checkpoint brings torch up before the clock
t0, c0 = time.perf_counter(), time.process_time()
def cost():
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    with open(out, "w") as o:
        json.dump({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rss_mb": hwm / 1024}, o)
atexit.register(cost)
sys.argv = ["charloom", *sys.argv[1:]]
runpy.run_module("charloom", run_name="__main__", alter_sys=True)
"""


def run(args: list[str], timeout: float, cost: Path) -> tuple[int | None, str, float, dict]:
    """(exit code or None when killed at the limit, stderr, wall seconds in all, the command's own cost) of
    `charloom ARGS` in a fresh process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", COST, str(cost), *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        seconds = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    spent = json.loads(cost.read_text()) if code is not None and cost.exists() else {}
    cost.unlink(missing_ok=True)
    return code, text, seconds, spent


def outcome(case: Case, code: int | None, err: str) -> str:
    if code is None:
        return "hang"
    if code == 0:
        return "load"
    lines = err.strip().splitlines()
    if "Traceback" in err:
        return "traceback"
    if len(lines) == 1 and lines[0].startswith("charloom: error: ") and str(case.path) in lines[0]:
        return "refusal"
    return "other"


# --fork: one process imports charloom (Python and torch start once) and forks a child per file, which runs the
# same command line through cli.main, prints any traceback as the interpreter would, and reports its cost
SERVER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])  # this folder
import charloom.checkpoint, charloom.cli  # torch too: the package imports lazily
from fuzz_files import cli_code
print("ready", flush=True)
for line in sys.stdin:
    args, err, cost = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.dup2(os.open(os.devnull, os.O_RDWR), 1)
        os.dup2(os.open(os.devnull, os.O_RDWR), 0)
        code = cli_code(args)
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        with open(cost, "w") as o:
            json.dump({"seconds": time.perf_counter() - t0, "cpu": time.process_time(), "rss_mb": hwm / 1024}, o)
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Forked:
    """Runs `charloom ARGS` in a child of one process that has imported charloom (see SERVER)."""

    def __init__(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, str(Path(__file__).resolve().parent)],
                                       stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        assert self.server.stdout.readline().strip() == "ready"  # charloom imported: the clock starts per file

    def __call__(self, args: list[str], timeout: float, cost: Path) -> tuple[int | None, str, float, dict]:
        err = cost.with_name("stderr")
        t0 = time.perf_counter()
        self.server.stdin.write(json.dumps([args, str(err), str(cost)]) + "\n")
        self.server.stdin.flush()
        pid = int(self.server.stdout.readline())  # forked: the limit counts from here
        t0 = time.perf_counter()
        ready, _, _ = select.select([self.server.stdout], [], [], max(0.0, timeout - (time.perf_counter() - t0)))
        if not ready:
            os.kill(pid, signal.SIGKILL)
        line = self.server.stdout.readline()  # the child's exit code, once it has ended
        code = int(line) if ready else None
        seconds = time.perf_counter() - t0
        text = err.read_text(errors="replace") if err.exists() else ""
        spent = json.loads(cost.read_text()) if code is not None and cost.exists() else {}
        err.unlink(missing_ok=True)
        cost.unlink(missing_ok=True)
        return code, text, seconds, spent

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait()


def attempt(case: Case, timeout: float, marker: Path, runner=None) -> dict:
    """One case: its outcome, time, peak RSS, last stderr line, and whether code from the file ran."""
    args = (["train", "--out", str(case.path), "--resume"] if case.resume else
            ["sample", "--checkpoint", str(case.path), "--length", "5"])
    code, err, seconds, spent = (runner or run)(args, timeout, marker.with_name("cost"))
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    lines = err.strip().splitlines() or [""]
    return {"kind": case.kind, "name": case.name, "expect": case.expect, "outcome": outcome(case, code, err),
            "wall": seconds, "seconds": spent.get("seconds", 0.0), "cpu": spent.get("cpu", 0.0),
            "rss_mb": spent.get("rss_mb", 0.0), "line": lines[-1][:300], "code_ran": ran, "resume": case.resume}


def costs(refusals: list[dict], base: dict, what: str) -> str:
    """The most a refusal of `what` cost once Python and torch were up, against refusing a 2-byte file."""
    slow = max(refusals, key=lambda r: r["seconds"])
    cpu = max(refusals, key=lambda r: r["cpu"])
    big = max(refusals, key=lambda r: r["rss_mb"])
    return (f"| {what} | {len(refusals)} | {slow['seconds']:.2f} s ({slow['name']}) | {cpu['cpu']:.2f} s "
            f"({cpu['name']}) | {big['rss_mb']:.0f} MB ({big['name']}) | {base['rss_mb']:.0f} MB, "
            f"{base['seconds']:.2f} s |")


def summary(rows: list[dict], bases: dict[str, dict], args: argparse.Namespace) -> str:
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    names = ["refusal", "traceback", "hang", "load", "other"]
    table = []
    for kind in [*kinds, "all hostile"]:
        mine = [r for r in rows if r["kind"] == kind or (kind == "all hostile" and r["expect"] == "refuse")]
        got = Counter(r["outcome"] for r in mine)
        table.append(report.row(kind, len(mine), *(got[n] for n in names), sum(r["code_ran"] for r in mine)))
    hostile = [r for r in rows if r["expect"] == "refuse"]
    refusals = [r for r in hostile if r["outcome"] == "refusal"]
    controls = [r for r in rows if r["expect"] == "load"]
    wrong = [r for r in rows if (r["outcome"] == "load") != (r["expect"] == "load")]
    where = ("in a child forked from one process that had imported charloom (Python and torch started once)"
             if args.fork else "in a fresh process")
    cost = [costs([r for r in refusals if r["resume"] == resume], bases[command], command)
            for command, resume in (("sample", False), ("train --resume", True))]
    return "\n".join([
        "## Hostile model files",
        "",
        f"Command: `{COMMAND} --flips {args.flips} --data-flips {args.data_flips} --timeout {args.timeout:g} "
        f"--seed {args.seed}{' --fork' if args.fork else ''}`.",
        f"Machine: {report.machine()}.",
        f"{len(hostile)} hostile files, each given to `charloom sample --checkpoint FILE --length 5` (resume files "
        f"to `charloom train --out FOLDER --resume`) {where} with a {args.timeout:g} s limit; "
        f"{len(controls)} valid files ran alongside as controls. A refusal is a non-zero exit with one stderr line "
        "naming the file and no traceback; a hostile file that loads is a silent load; \"code ran\" counts the "
        "pickled payloads whose marker file appeared.",
        "",
        *report.table(["kind", "files", "one-line refusals", "tracebacks", "hangs", "loads", "other",
                       "code ran"], table),
        "",
        f"Controls loaded: {sum(r['outcome'] == 'load' for r in controls)} of {len(controls)}. "
        f"Outcomes other than expected: {len(wrong)}"
        + (" (" + "; ".join(f"{r['kind']}: {r['name']} -> {r['outcome']}" for r in wrong[:5]) + ")" if wrong else "")
        + ".",
        "",
        "The most a refusal cost, timed inside the process once Python and torch were up, beside refusing a 2-byte "
        "file the same way (what the interpreter with charloom imported holds; a resume file is refused only after "
        "its model has loaded, as the model file's size allows). Wall seconds carry the load of other work on "
        "the machine; CPU seconds do not.",
        "",
        *report.table(["command", "refusals", "wall", "CPU", "peak RSS", "2-byte file"], cost),
    ])


def build(root: Path, marker: Path, args: argparse.Namespace) -> list[Case]:
    f = Forge(root, marker)
    controls(f)
    sizes_and_json(f)
    vocab_and_weights(f)
    ngram_fields(f)
    not_files_and_payloads(f)
    flips(f, random.Random(args.seed), args.flips, args.data_flips)
    resume_headers(f)
    return f.cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flips", type=int, default=48, help="random single-bit flips over the header")
    ap.add_argument("--data-flips", type=int, default=16, help="random single-bit flips over the tensor bytes")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds before a run counts as a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fork", action="store_true", help="start Python and torch once and fork a child per file "
                                                        "(for a busy machine), instead of `python -m charloom`")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="charloom-fuzz-"))
    os.environ["CHARLOOM_CACHE_DIR"] = str(root / "cache")
    marker = root / "code-ran"
    runner = Forked() if args.fork else None
    try:
        cases = build(root, marker, args)
        (root / "tiny").mkdir()
        tiny = root / "tiny" / checkpoint.RESUME_FILE
        tiny.write_bytes(b"xx")
        bases = {"sample": attempt(Case("baseline", "a 2-byte file", tiny), args.timeout, marker, runner),
                 "train --resume": attempt(Case("baseline", "a 2-byte resume file", tiny.parent, resume=True),
                                           args.timeout, marker, runner)}
        rows = []
        for i, case in enumerate(cases):
            rows.append(attempt(case, args.timeout, marker, runner))
            r = rows[-1]
            print(f"{i + 1:3d}/{len(cases)} {r['outcome']:9s} {r['wall']:5.1f}s {r['cpu']:5.2f}cpu "
                  f"{r['rss_mb']:4.0f}MB {case.kind}: {case.name}: {r['line'][:100]}", flush=True)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(root, ignore_errors=True)
    body = summary(rows, bases, args)
    report.write_section("fuzz-files", body)
    print(body)


if __name__ == "__main__":
    main()
