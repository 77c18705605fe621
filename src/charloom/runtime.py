"""The hardware: the one place that knows which device, threads, processes and precision run here.

    rt = Runtime.start(device="auto", precision="auto", threads=0, cell="lstm")
    with rt.autocast():
        logits, state = model(ids)

Precision is resolved by probing, not by reading CPU flags: whether a bf16 kernel exists depends on
the kernel library as much as on the processor (oneDNN has a bf16 LSTM only on AVX-512 machines, and
`ONEDNN_MAX_CPU_ISA` can take it away on any machine). A probe runs one small forward and backward
step of the cell's real fused module under the candidate precision, once per process and cached.
`auto` picks bf16 only where it runs and is faster than fp32; an explicit bf16 where it cannot run
is a one-line error that names the flag and what runs instead.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .cells import CELLS
from .errors import CharloomError, ConfigError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision -> dtype
# the probe's shape (B, T, H, E) and its timing: large enough that a faster kernel shows, small enough
# to cost well under a second; the GPU needs more work per call before the kernels, not the launches, count
PROBE_SHAPE = {"cpu": (16, 32, 512, 64), "cuda": (64, 128, 1024, 128)}
PROBE_REPEATS = 5  # rounds timed when they show the candidate FASTER
# rounds at most when they do not: while other processes want the same cores, a few rounds can all be slowed for
# one precision and not the other, and a run would train in fp32, a third slower, for a probe's bad luck
PROBE_ROUNDS = 20
# ... but a candidate this many times slower in its fastest round is emulated (bf16 on a CPU without it: 8-12x),
# not unlucky (other work was seen to slow its rounds 2x): more rounds would cost seconds each and show nothing
PROBE_SLOWER = 4.0
TORCH_THREADS = torch.get_num_threads()  # torch's own default (the cores, or OMP_NUM_THREADS), before any change
IDLE_SECONDS = 0.25  # how long the CPUs' use by other work is watched before a run's threads are set
READ_IDLE_SECONDS = 0.1  # ... and before a command that only runs a model sets them: enough to see a busy CPU, and
# a tenth of a second on a sample's start
WATCH_SECONDS = 5.0  # how often a run that chose its own threads looks again at the other work on its CPUs
# the share of a CPU other work must take, while the run's threads are on that CPU, for the run to leave it (beside
# two threads of a run, a job that wants a whole CPU gets about two thirds of one), and the share it may still
# take when the run takes the CPU back: between the two, the count stays as it is, so it does not flip
WATCH_SHARE, BACK_SHARE = 0.5, 0.25
FASTER = 1.15  # auto takes bf16 when its step runs at least this many times as fast as fp32's
SLOW_NOTE = 2.0  # a precision asked for by name whose step runs this many times slower than fp32's is said


def _has_mps() -> bool:
    """Whether Apple's MPS backend is here."""
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu; a named device that is not here is a one-line error."""
    has_mps = _has_mps()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharloomError("--device cuda: no CUDA GPU is available here (use --device auto or cpu)")
    if name == "mps" and not has_mps:
        raise CharloomError("--device mps: Apple's MPS is not available here (use --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise CharloomError(f"--device: {name!r} is not one of auto, cpu, cuda, mps")
    return torch.device(name)


def device_here(device: torch.device | str | None, default: torch.device | None = None,
                name: str = "device") -> torch.device:
    """A Python caller's `device` as a torch.device this machine has (None: `default`, else the CPU); a name torch
    cannot read, or a GPU that is not here, is a one-line error naming `name` rather than torch's own."""
    if device is None:
        return default if default is not None else torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ConfigError(f"{name}: {device!r} is not a device (cpu, cuda, cuda:1, mps)")
    try:
        d = torch.device(device)  # an int is the accelerator of that index, as torch reads it
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{name}: {device!r} is not a device here (cpu, cuda, cuda:1, mps)") from None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if d.type == "cuda" and (d.index or 0) >= gpus:
        raise ConfigError(f"{name}: {str(d)!r} is not here ({gpus} CUDA GPUs available)")
    if d.type == "mps" and not _has_mps():
        raise ConfigError(f"{name}: Apple's MPS is not available here")
    if d.type == "meta":  # shapes without storage: nothing can be computed there
        raise ConfigError(f"{name}: 'meta' holds no numbers to compute with")
    return d


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a step's time is its kernels' and not their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def set_threads(threads: int, watch: bool = True, seconds: float = IDLE_SECONDS) -> str | None:
    """CPU threads for torch's kernels. 0: torch's default, held to the CPUs this process may use and (`watch`)
    to those other work left idle over the last `seconds`. A container's CPU quota (Docker's --cpus, a Kubernetes
    limit) leaves all the host's cores in sight (loky reads the quota, the affinity mask and LOKY_MAX_CPU_COUNT);
    and threads beyond the idle CPUs wait on each other at every step: two runs of 2 threads on 2 cores each
    trained at a seventh of one run's rate, where a run of 1 thread beside a run of 2 left their sum near one
    run's. More than the machine's CPUs is refused: each thread is an OS thread, and past the cores they only
    queue. Returns a line for the user when busy CPUs took threads away (None otherwise)."""
    if threads:
        cpus = os.cpu_count() or 1
        if threads > cpus:
            raise CharloomError(f"--threads {threads}: this machine has {cpus} CPUs; give at most {cpus} "
                                f"(0: as many as this process may use)")
        torch.set_num_threads(threads)
        return None
    usable = usable_cpus()
    idle = idle_cpus(seconds) if watch and usable > 1 else usable
    torch.set_num_threads(max(1, min(usable, idle)))
    if torch.get_num_threads() >= usable:
        return None
    return (f"threads: {torch.get_num_threads()} of the {usable} CPUs this process may use: other work keeps "
            f"{usable - idle} of them busy, and threads that wait for a busy CPU slow every step; --threads "
            f"{usable} takes them all")


def usable_cpus() -> int:
    """The threads torch may take here: its own default, held to the CPUs this process may use."""
    from loky import cpu_count

    given = os.environ.get("LOKY_MAX_CPU_COUNT")
    try:
        int(given or 0)  # as loky reads it, unchecked
    except ValueError:
        raise CharloomError(f"LOKY_MAX_CPU_COUNT: {given[:20]!r} is not a whole number of CPUs (unset it, or give "
                            f"one such as 2)") from None
    return min(cpu_count(), TORCH_THREADS)


def _allowed(count: int) -> list[int]:
    """The CPUs (indices into the machine's `count`) this process may run on."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(count)
    return [i for i in allowed if i < count] or list(range(count))


def other_work() -> Callable[[], tuple[float, int]]:
    """A reading of the other work on the CPUs this process may run on: each call gives (the CPUs' worth that work
    took since the call before, how many CPUs those are). Work at a lower priority (nice) is left out: it yields
    the CPU to this process's threads. Unreadable CPU times read as no other work."""
    import psutil

    def sample() -> tuple[float, float, float, int]:  # (wall s, busy CPU s, this process's CPU s, CPUs)
        times = psutil.cpu_times(percpu=True)
        allowed = _allowed(len(times))
        own = me.cpu_times()
        return (time.monotonic(), sum(times[i].user + times[i].system for i in allowed),
                own.user + own.system if mine else 0.0, len(allowed))

    try:
        me = psutil.Process()
        mine = me.nice() <= 0  # a niced run's own time is counted as nice, not as the busy time read here
        last = sample()
    except (OSError, psutil.Error):
        return lambda: (0.0, os.cpu_count() or 1)

    def reading() -> tuple[float, int]:
        nonlocal last
        try:
            now = sample()
        except (OSError, psutil.Error):
            return 0.0, last[3]
        (t0, busy0, own0, _), last = last, now
        wall = now[0] - t0
        return (max(0.0, (now[1] - busy0 - (now[2] - own0)) / wall) if wall > 0 else 0.0), now[3]

    return reading


class ThreadWatch:
    """Keeps the threads of a run that chose its own to the CPUs other work leaves it, as that work starts and
    stops: a second run started at the same moment saw idle CPUs too, and each run's threads then wait on the
    other's at every step (two such runs of 2 threads on 2 cores trained at a third of one run's rate, on the
    AVX2 path). Every `every` seconds it reads what other work took (`reading`: CPUs' worth, of how many CPUs) and
    leaves a CPU that work takes WATCH_SHARE of, or takes back one it leaves all but BACK_SHARE of; at least one
    thread, at most `usable`."""

    def __init__(self, usable: int, reading: Callable[[], tuple[float, int]] | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.usable, self.clock = usable, clock
        self.every = WATCH_SECONDS if every is None else every
        self.reading = reading or other_work()
        self.last = clock()

    def check(self) -> str | None:
        """A line for the user when the threads changed (None otherwise)."""
        now = self.clock()
        if now - self.last < self.every:
            return None
        self.last = now
        other, cpus = self.reading()
        have = torch.get_num_threads()
        leave, back = cpus - math.floor(other + WATCH_SHARE), cpus - math.floor(other + 1 - BACK_SHARE)
        want = max(1, min(self.usable, leave if leave < have else back if back > have else have))
        if want == have:
            return None
        torch.set_num_threads(want)
        return (f"threads: {want} of the {self.usable} CPUs this process may use from here on: other work now takes "
                f"{other:.1f} of {cpus}")


def idle_cpus(seconds: float = IDLE_SECONDS) -> int:
    """The CPUs this process may run on that other work left idle over the last `seconds`: a CPU counts as busy
    once other work takes three quarters of one (background work of a fraction of a core leaves the threads
    alone). Unreadable CPU times count as an idle machine."""
    import psutil

    try:
        percent = psutil.cpu_percent(interval=seconds, percpu=True)  # one figure per CPU of the machine
        mine = [percent[i] for i in _allowed(len(percent))]
    except (OSError, psutil.Error):
        return os.cpu_count() or 1
    busy = sum(mine) / 100.0
    return max(0, len(mine) - math.floor(busy + 0.25))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the model's products run in: autocast to bf16/fp16, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise CharloomError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


@dataclass(frozen=True)
class Probe:
    """What one probe of a (device, cell, precision) found."""

    runs: bool
    error: str = ""  # the kernel's own message, first sentence, when it does not run


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(". ")[0].rstrip(".")


def _probe_step(device: torch.device, cell: str) -> Callable[[str], None]:
    """One forward and backward step of the cell's fused module on the probe's shape, in a given precision."""
    B, T, H, E = PROBE_SHAPE.get(device.type, PROBE_SHAPE["cpu"])
    module = CELLS[cell].make(E, H, 1).to(device)
    x = torch.randn(B, T, E, device=device, requires_grad=True)

    def step(precision: str) -> None:
        with autocast(device, precision):
            out, _ = module(x)  # (B, T, H)
        out.float().square().mean().backward()
        synchronize(device)

    return step


@contextlib.contextmanager
def _quiet_probe(device: torch.device):
    """The global RNG is left as it was (the probe's weights come from a forked stream), and grad mode is on
    whatever the caller's mode, so a probe changes nothing a run can see."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode(False), \
            torch.enable_grad():
        torch.manual_seed(0)
        yield


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """torch's CPU kernels on one thread inside, the caller's count restored after (no change off the CPU)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def probe(device_type: str, cell: str, precision: str) -> Probe:
    """Does the cell's fused module run forward and backward in `precision` here? Cached per process."""
    device = torch.device(device_type)
    with _quiet_probe(device):
        try:
            _probe_step(device, cell)(precision)
        except RuntimeError as e:  # no kernel for this precision here
            return Probe(False, _first_sentence(e))
    return Probe(True)


@functools.cache
def speedup(device_type: str, cell: str, precision: str) -> float:
    """How many times faster the cell's step runs in `precision` than in fp32 here (it must run). The two are
    timed in turns, the fastest round of each counting: PROBE_REPEATS rounds when they show `precision` FASTER,
    else more, up to PROBE_ROUNDS, until they do (one, when it is PROBE_SLOWER). On a CPU one thread times them:
    the kernels' speed is the question, and a step of several threads waits for the slowest, which other
    processes on the cores make a lottery. Cached per process."""
    device = torch.device(device_type)
    with _quiet_probe(device), _one_thread(device):
        step = _probe_step(device, cell)
        best = {"fp32": math.inf, precision: math.inf}
        for p in best:  # warm-up: kernels are made on first use
            step(p)
        for done in range(PROBE_ROUNDS):
            if done >= PROBE_REPEATS and best["fp32"] >= FASTER * best[precision]:
                break
            if done and best[precision] >= PROBE_SLOWER * best["fp32"]:
                break
            for p in best:
                t0 = time.perf_counter()
                step(p)
                best[p] = min(best[p], time.perf_counter() - t0)
    return best["fp32"] / best[precision]


def resolve_precision(name: str, device: torch.device, cell: str = "lstm") -> str:
    """--precision for this device and cell: fp32, bf16 or fp16, checked against what runs here."""
    if name not in ("auto", *PRECISIONS):
        raise CharloomError(f"--precision: {name!r} is not one of auto, {', '.join(PRECISIONS)}")
    if cell not in CELLS:
        raise CharloomError(f"--cell: {cell!r} is not one of {', '.join(CELLS)}")
    if name == "fp32" or device.type == "mps":
        if name not in ("fp32", "auto"):
            raise CharloomError(f"--precision {name}: not supported on mps here; use fp32")
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise CharloomError(f"--precision fp16: fp16 autocast is for a CUDA GPU; on {device.type} use fp32, or auto "
                            f"to take bf16 where it runs and is faster")
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return "fp32"
        runs = probe(device.type, cell, "bf16").runs
        return "bf16" if runs and speedup(device.type, cell, "bf16") >= FASTER else "fp32"
    found = probe(device.type, cell, name)
    if not found.runs:
        raise CharloomError(f"--precision {name}: this {device.type} has no {name} kernel for the {cell} cell "
                            f"({found.error}); use --precision fp32, or auto to take the fastest that runs")
    return name


def _slow_note(name: str, resolved: str, device: torch.device, cell: str) -> str | None:
    """The line that says a precision asked for by name runs emulated on this CPU (bf16 without AVX512-BF16 or
    AMX: 8-12x slower than fp32); auto never takes it."""
    if name == "auto" or resolved == "fp32" or device.type != "cpu":
        return None
    slower = 1 / speedup(device.type, cell, resolved)
    if slower < SLOW_NOTE:
        return None
    return (f"--precision {resolved}: the {cell} cell's step runs {slower:.0f}x slower than in fp32 on this CPU "
            f"(no native {resolved} kernel here); --precision fp32, or auto, would train faster")


class Processes:
    """The processes of a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or just this one.

    With several, training is DistributedDataParallel (gloo on CPU, NCCL on GPU): each process reads its
    own share of the batches, gradients are averaged, and only rank 0 evaluates, prints and saves.
    """

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._started = False

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group; a GPU process takes the GPU of its local rank."""
        if not self.many:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self._started = True
        return device

    def total(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over all processes (the values themselves with one process)."""
        if not self.many:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], device=device, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """`t` from every process, by rank (every process must call this)."""
        if not self.many:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous())
        return out

    def close(self, finished: bool) -> None:
        """Leave the process group. finished: every process got here the same way, so they wait for each
        other first (a process that hangs up while a peer still holds the connection can abort it)."""
        if self._started:
            if finished:
                dist.barrier()
            gc.collect()  # the DDP wrapper's reference cycles hold the group: free it while the peers are alive
            dist.destroy_process_group()
            self._started = False


@dataclass
class Runtime:
    """Where and how a model runs: the device, the resolved precision, and the processes of the launch."""

    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    procs: Processes = field(default_factory=Processes)
    note: str | None = None  # what the user should know of the threads chosen (other work on the CPUs)
    watch: ThreadWatch | None = None  # a CPU run that chose its own threads: keeps them to the idle CPUs

    @classmethod
    def start(cls, device: str = "auto", precision: str = "auto", threads: int = 0, cell: str = "lstm",
              watch: bool = True, follow: bool | None = None, asked: bool = True) -> Runtime:
        """Pick the device, join the process group (under torchrun), set the threads (`watch`: leaving the CPUs
        other work keeps busy, on a CPU run), resolve the precision. `follow`: keep the threads to the CPUs other
        work leaves as the run goes (a ThreadWatch; default: when the count was not given). `asked`: `precision`
        is the user's (not a resumed run's record), so a named one that runs emulated here is said."""
        procs = Processes()
        dev = procs.start(pick_device(device))
        note = set_threads(threads, watch=watch and dev.type == "cpu")
        follow = (watch and not threads) if follow is None else follow
        usable = usable_cpus()
        watcher = ThreadWatch(usable) if follow and dev.type == "cpu" and not procs.many and usable > 1 else None
        resolved = resolve_precision(precision, dev, cell)
        if procs.many:  # every process computes as the first one chose: their probes may time differently
            names = list(PRECISIONS)
            (index,) = procs.total([names.index(resolved) if procs.main else 0], dev)
            resolved = names[int(index)]
        slow = _slow_note(precision, resolved, dev, cell) if asked and procs.main else None
        note = "\n".join(line for line in (note, slow) if line) or None
        return cls(dev, resolved, procs, note, watcher)

    def retune(self) -> str | None:
        """Between steps: the threads kept to the CPUs other work leaves idle, when this run chose its own; a
        line for the user when they changed."""
        return self.watch.check() if self.watch is not None else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)


__all__ = ["PRECISIONS", "Probe", "Processes", "Runtime", "ThreadWatch", "autocast", "pick_device", "probe",
           "resolve_precision", "set_threads", "speedup", "synchronize"]
