"""Shared by the benchmarks: machine facts, repeat statistics, run logs, and writing one section of BENCHMARKS.md.

Each benchmark owns a section between `<!-- name -->` and `<!-- /name -->` markers and rewrites only
that, so benchmarks can be run one at a time.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "BENCHMARKS.md"
HEAD = "# Benchmarks\n\nFigures written by the scripts under `bench/`; each section says the command that made it.\n"


def read_log(path: Path) -> list[dict]:
    """A benchmark's run log: one JSON object a line (blank lines skipped; no file, no rows)."""
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def append_log(path: Path, row: dict) -> None:
    """Keep one run's row as it finishes, so a long benchmark stopped midway loses nothing, and print it."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


# An AVX2-only x86 machine (a Zen 3, say) on any x86 machine: each of torch's kernel libraries held to AVX2 (ATen's
# own kernels, oneDNN's, which then has no bf16 LSTM, and MKL's products), as an AVX2 CPU has them
AVX2_PATH = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def path_words(env: dict[str, str]) -> str:
    """The variables that set a kernel path, as a shell line puts them before a command ("" for none)."""
    return " ".join(f"{k}={v}" for k, v in env.items())


def path_env() -> dict[str, str]:
    """The variables of AVX2_PATH this process's environment sets (none on the native path)."""
    return {k: os.environ[k] for k in AVX2_PATH if k in os.environ}


# Rows logged before each row named its CPU all came from the machine that wrote the sections then.
EARLIER_CPU = "AMD EPYC"


def cpu_model() -> str:
    """This machine's CPU model, as /proc/cpuinfo names it (else what platform knows). A name with no model number
    in it ("AMD EPYC", as a cloud machine may report a Zen 3 and a Zen 5 alike) gains the family and model, so
    that two machines' rows are never taken for one's."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        info = {}
    info = {k.strip(): v.strip() for k, v in info.items()}
    name = info.get("model name") or platform.processor() or platform.machine()
    if not any(c.isdigit() for c in name) and "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def cpu_of(row: dict) -> str:
    """The CPU a logged row ran on."""
    return row.get("cpu", EARLIER_CPU)


def machine(kernels: bool = True) -> str:
    """CPU model (with its kernel path unless not `kernels`), cores, Python, torch and today's date."""
    import torch

    cpu = cpu_model()
    shown = f"{cpu} ({isa()})" if kernels else cpu
    return (f"{shown}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def isa() -> str:
    """The instruction sets the kernels use: ATen's vector level, oneDNN's and MKL's caps when set, and whether
    a bf16 LSTM kernel runs here (the runtime's probe)."""
    import torch

    from charloom.runtime import probe

    cap, mkl = os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("MKL_ENABLE_INSTRUCTIONS")
    bf16 = probe("cpu", "lstm", "bf16").runs
    return (f"ATen {torch.backends.cpu.get_cpu_capability()}" + (f", oneDNN capped at {cap}" if cap else "") +
            (f", MKL capped at {mkl}" if mkl else "") + f", bf16 LSTM kernel {'present' if bf16 else 'absent'}")


def product_rate(m: int, k: int, n: int, repeats: int = 3, seconds: float = 0.5, dtype=None) -> float:
    """GFLOP/s of `torch.mm` on (m, k) x (k, n) at the current thread count: the median of `repeats`
    timings of as many products as fit in `seconds`. (2048, 2048, 2048) is the benchmarks' matmul peak;
    (1, 512, 2048) is the matrix-vector product that bounds a batch-1 generation step."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    return statistics.median(calls_per_second(lambda: torch.mm(a, b), seconds) * 2 * m * k * n / 1e9
                             for _ in range(repeats))


def calls_per_second(fn, seconds: float, min_calls: int = 1) -> float:
    """Calls of `fn` per second, timing as many as fit in `seconds` (and at least `min_calls`)."""
    count, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds or count < min_calls:
        fn()
        count += 1
    return count / dt


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    """'median (min-max, n=K)' of repeated measurements."""
    if len(values) == 1:
        return fmt.format(values[0]) + " (n=1)"
    return (f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))}, "
            f"n={len(values)})")


def row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: list[str]) -> list[str]:
    """A markdown table's lines: the header, its rule, then the rows (each made by `row`)."""
    return [row(*header), "|" + "---|" * len(header), *rows]


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = OUT.read_text() if OUT.exists() else HEAD
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    OUT.write_text(text)
