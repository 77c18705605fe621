import os
import platform
import subprocess
import sys

import pytest
import torch

import charloom
from charloom import runtime
from charloom.cells import CELLS
from charloom.config import BatchConfig, CorpusConfig, ModelConfig, TrainConfig
from charloom.errors import CharloomError
from charloom.runtime import Probe, probe, resolve_precision
from charloom.trainer import setup

MEASURED_IDLE = runtime.idle_cpus  # the real measure, before any test replaces it (conftest: a quiet machine)

pytestmark = pytest.mark.kernel
CPU = torch.device("cpu")


def fake_probes(monkeypatch, bf16: Probe, speedup: float = 1.0):
    monkeypatch.setattr(runtime, "probe", lambda device, cell, precision: Probe(True) if precision == "fp32" else bf16)
    monkeypatch.setattr(runtime, "speedup", lambda device, cell, precision: speedup)


def test_auto_picks_bf16_only_where_it_runs_and_is_faster(monkeypatch):
    fake_probes(monkeypatch, Probe(True), speedup=1.6)
    assert resolve_precision("auto", CPU) == "bf16"
    fake_probes(monkeypatch, Probe(True), speedup=1.05)  # runs, but not enough faster to be worth its rounding
    assert resolve_precision("auto", CPU) == "fp32"
    fake_probes(monkeypatch, Probe(False, "could not create a primitive descriptor"), speedup=9.0)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_explicit_bf16_without_a_kernel_is_one_line_naming_the_flag(monkeypatch):
    fake_probes(monkeypatch, Probe(False, "could not create a primitive descriptor for the LSTM"))
    with pytest.raises(CharloomError) as e:
        resolve_precision("bf16", CPU, "lstm")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--precision bf16: ") and "lstm" in msg and "--precision fp32" in msg
    fake_probes(monkeypatch, Probe(True), speedup=0.5)  # asked for by name: taken wherever it runs
    assert resolve_precision("bf16", CPU) == "bf16"


def test_fp16_needs_cuda_and_unknown_names_are_refused():
    with pytest.raises(CharloomError, match="--precision fp16: fp16 autocast is for a CUDA GPU; on cpu use fp32, or "):
        resolve_precision("fp16", CPU)
    with pytest.raises(CharloomError, match="--precision: 'fp8' is not one of auto, fp32"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_probe_agrees_with_the_model_it_stands_for(cell):
    """The probe's verdict is the real model's: a CharRNN of that cell trains a step in bf16 exactly where
    the probe says bf16 runs."""
    model = charloom.CharRNN(ModelConfig(cell=cell, hidden_size=24, embedding=8, vocab_size=12))
    ids = torch.randint(0, 12, (3, 10))
    try:
        with runtime.autocast(CPU, "bf16"):
            logits, _ = model(ids)
        logits.float().sum().backward()
        ran = True
    except RuntimeError:
        ran = False
    assert probe("cpu", cell, "bf16").runs == ran
    assert probe("cpu", cell, "fp32").runs
    if ran:
        assert runtime.speedup("cpu", cell, "bf16") > 0


def test_the_probe_leaves_the_random_stream_and_grad_mode_alone():
    probe.cache_clear()
    runtime.speedup.cache_clear()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with torch.inference_mode():
        found = probe("cpu", "gru", "fp32")  # runs its backward even when called under inference mode
        assert runtime.speedup("cpu", "gru", "fp32") > 0
    assert found.runs
    assert torch.equal(torch.rand(3), expected)


def test_autocast_is_the_only_context_and_fp32_is_none():
    with runtime.autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("speedup, said", [(0.1, "10x slower"), (0.25, "4x slower"), (0.6, None), (1.6, None)])
def test_a_precision_asked_for_by_name_that_runs_emulated_is_said_once_before_training(monkeypatch, text_file,
                                                                                      tmp_path, capsys, speedup, said):
    fake_probes(monkeypatch, Probe(True), speedup=speedup)
    rt = runtime.Runtime.start("cpu", "bf16", threads=1, cell="gru")
    assert rt.precision == "bf16"  # asked for by name: it runs, and is said to be slow
    assert (rt.note is None) == (said is None)
    if said:
        assert rt.note == f"--precision bf16: the gru cell's step runs {said} than in fp32 on this CPU (no native " \
                          "bf16 kernel here); --precision fp32, or auto, would train faster"
        charloom.train(source=str(text_file), out=str(tmp_path / "r"), precision="bf16", cell="gru", hidden_size=8,
                       batch_size=2, seq_len=8, max_steps=1, sample_length=0, eval_chars=0)
        assert capsys.readouterr().out.count(said) == 1
    assert runtime.Runtime.start("cpu", "auto", threads=1, cell="gru").note is None  # auto takes the faster


def test_the_slow_precision_is_said_for_the_cell_that_runs_and_not_of_a_resumed_runs_record(monkeypatch, text_file,
                                                                                           tmp_path, capsys):
    timed = []

    def speedup(device, cell, precision):
        timed.append(cell)
        return 0.1 if cell == "gru" else 1.0

    monkeypatch.setattr(runtime, "probe", lambda device, cell, precision: Probe(True))
    monkeypatch.setattr(runtime, "speedup", speedup)
    small = dict(hidden_size=8, batch_size=2, seq_len=8, sample_length=0, eval_chars=0)
    charloom.train(source=str(text_file), out=str(tmp_path / "gru"), cell="gru", max_steps=1, **small)
    capsys.readouterr()
    charloom.train(source=str(text_file), out=str(tmp_path / "child"), init_from=str(tmp_path / "gru"),
                   precision="bf16", max_steps=1, **{k: v for k, v in small.items() if k != "hidden_size"})
    assert timed[-1] == "gru" and "the gru cell's step runs 10x slower" in capsys.readouterr().out  # the parent's
    charloom.train(out=str(tmp_path / "child"), resume=True, max_steps=2)  # bf16 is the record's, not asked
    assert "slower" not in capsys.readouterr().out
    charloom.train(out=str(tmp_path / "child"), resume=True, max_steps=3, precision="bf16")  # asked again
    assert "the gru cell's step runs 10x slower" in capsys.readouterr().out


def test_a_test_process_starts_runs_as_on_a_quiet_machine_of_its_share_of_the_cores():
    """conftest's promise, which a suite of several processes keeps too: no run in a test is told of busy CPUs."""
    from conftest import CPUS

    rt = runtime.Runtime.start("cpu", "fp32")
    assert rt.note is None and torch.get_num_threads() == min(CPUS, runtime.TORCH_THREADS)


def test_the_trainer_runs_in_the_precision_the_runtime_resolved(monkeypatch, text_file, tmp_path):
    cfgs = [CorpusConfig(source=str(text_file)), BatchConfig(batch_size=2, seq_len=8), ModelConfig(hidden_size=8)]
    fake_probes(monkeypatch, Probe(True), speedup=2.0)
    t = setup(*cfgs, TrainConfig(out=str(tmp_path / "a"), precision="bf16", max_steps=1, progress=False))
    assert t.rt.precision == "bf16" and t.rt.device == CPU
    t = setup(*cfgs, TrainConfig(out=str(tmp_path / "b"), precision="fp32", max_steps=1, progress=False))
    assert t.rt.precision == "fp32"
    fake_probes(monkeypatch, Probe(False, "no kernel"))
    assert setup(*cfgs, TrainConfig(out=str(tmp_path / "c"), max_steps=1, progress=False)).rt.precision == "fp32"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's ISA cap is for x86 CPUs")
def test_on_the_avx2_path_auto_is_fp32_and_bf16_is_a_one_line_error(tmp_path):
    """What a user of an AVX2-only machine sees, on any x86 machine: oneDNN capped at AVX2 has no bf16 LSTM."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("import torch; from charloom.runtime import resolve_precision as r; "
            "print(r('auto', torch.device('cpu'), 'lstm'))")
    auto = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.strip() == "fp32"
    p = subprocess.run([sys.executable, "-m", "charloom", "train", "names", "--precision", "bf16", "--max-steps", "1",
                        "--out", str(tmp_path / "run"), "--no-progress"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charloom: error: --precision bf16: ") and "fp32" in lines[0]
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


def clocked_steps(monkeypatch, seconds):
    """The probe's step and clock faked: the n-th step of a precision takes seconds(precision, n)."""
    clock, calls = [0.0], {"fp32": 0, "bf16": 0}

    def step(precision):
        assert torch.get_num_threads() == 1  # timed on one thread: several wait for the slowest
        clock[0] += seconds(precision, calls[precision])
        calls[precision] += 1

    monkeypatch.setattr(runtime, "_probe_step", lambda device, cell: step)
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock[0])
    runtime.speedup.cache_clear()
    return calls


def test_the_speed_probe_times_more_rounds_before_it_calls_bf16_no_faster(monkeypatch):
    # a busy machine slows bf16's first rounds (the warm-up and PROBE_REPEATS more); later ones show its speed
    calls = clocked_steps(monkeypatch, lambda p, n: 0.02 if p == "fp32" else 0.04 if n <= 5 else 0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert runtime.speedup("cpu", "lstm", "bf16") == pytest.approx(2.0)
        assert torch.get_num_threads() == 2  # the caller's threads, restored
    finally:
        torch.set_num_threads(threads)
    assert calls["bf16"] == runtime.PROBE_REPEATS + 2  # stopped at the first round that showed it
    calls = clocked_steps(monkeypatch, lambda p, n: 0.02 if p == "fp32" else 0.01)  # clear at once: 5 rounds
    assert runtime.speedup("cpu", "lstm", "bf16") == pytest.approx(2.0)
    assert calls["fp32"] == calls["bf16"] == runtime.PROBE_REPEATS + 1
    calls = clocked_steps(monkeypatch, lambda p, n: 0.02 if p == "fp32" else 0.03)  # really slower: every round
    assert runtime.speedup("cpu", "lstm", "bf16") == pytest.approx(2 / 3)
    assert calls["bf16"] == runtime.PROBE_ROUNDS + 1
    runtime.speedup.cache_clear()


def test_default_threads_are_held_to_the_cpus_the_process_may_use(monkeypatch):
    """torch counts the host's cores; a container's CPU quota allows fewer, and the default keeps to them. An
    explicit count is taken as given, and a quota above torch's own default changes nothing. A count above the
    machine's CPUs is refused by name, before any thread is made."""
    import loky

    threads = torch.get_num_threads()
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(runtime, "TORCH_THREADS", 4)
    monkeypatch.setattr(runtime, "idle_cpus", lambda *_: 8)  # a quiet machine
    try:
        with pytest.raises(CharloomError, match=r"^--threads 5000: this machine has 8 CPUs; give at most 8"):
            runtime.set_threads(5000)
        assert torch.get_num_threads() == threads
        monkeypatch.setattr(loky, "cpu_count", lambda: 1)
        assert runtime.set_threads(0) is None
        assert torch.get_num_threads() == 1
        assert runtime.set_threads(3) is None
        assert torch.get_num_threads() == 3
        monkeypatch.setattr(loky, "cpu_count", lambda: 64)
        runtime.set_threads(0)
        assert torch.get_num_threads() == 4  # torch's own default, not what an earlier run set
    finally:
        torch.set_num_threads(threads)


def test_default_threads_leave_the_cpus_other_work_keeps_busy(monkeypatch):
    """Threads past the idle CPUs wait on each other at every step: the default takes the idle ones (at least one)
    and says so; background work of a fraction of a core, a quiet machine, or --threads given leave it as it was."""
    import loky
    import psutil

    threads = torch.get_num_threads()
    monkeypatch.setattr(runtime, "idle_cpus", MEASURED_IDLE)  # the measure itself, over psutil's figures
    monkeypatch.setattr(loky, "cpu_count", lambda: 4)
    monkeypatch.setattr(runtime, "TORCH_THREADS", 4)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    try:
        # each CPU's percent busy -> the threads taken, and how many CPUs the note calls busy
        for percent, expected, busy in [([0, 0, 0, 0], 4, 0), ([40, 20, 0, 0], 4, 0), ([100, 0, 0, 0], 3, 1),
                                        ([50, 50, 0, 0], 3, 1), ([100, 100, 0, 0], 2, 2), ([100] * 4, 1, 4)]:
            monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False, p=percent: p)
            note = runtime.set_threads(0)
            assert torch.get_num_threads() == expected, percent
            if not busy:
                assert note is None
            else:
                assert note.startswith(f"threads: {expected} of the 4 CPUs this process may use: other work keeps "
                                       f"{busy} of them busy")
                assert note.endswith("--threads 4 takes them all")
        assert runtime.set_threads(0, watch=False) is None and torch.get_num_threads() == 4  # not watched
        assert runtime.set_threads(2) is None and torch.get_num_threads() == 2  # asked for: taken as given
        # only the CPUs this process may run on count
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {2, 3}, raising=False)
        monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: [100, 100, 0, 0])
        assert runtime.idle_cpus() == 2
        monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: [0, 0, 100, 100])
        assert runtime.idle_cpus() == 0

        def unreadable(interval=None, percpu=False):
            raise PermissionError("/proc/stat")

        monkeypatch.setattr(psutil, "cpu_percent", unreadable)
        assert runtime.idle_cpus() == os.cpu_count()  # counted as a quiet machine, not a failed run
    finally:
        torch.set_num_threads(threads)


def test_a_resumed_run_takes_the_threads_it_recorded(monkeypatch, text_file, tmp_path):
    """torch's sums split their work by the thread count: a resumed run computes with the threads it started with,
    whatever the machine is doing now, unless --threads says otherwise."""
    threads = torch.get_num_threads()
    cfgs = [CorpusConfig(source=str(text_file)), BatchConfig(batch_size=2, seq_len=8), ModelConfig(hidden_size=8)]
    out = str(tmp_path / "run")
    try:
        monkeypatch.setattr(runtime, "idle_cpus", lambda *_: 1)  # busy when it starts: 1 thread
        monkeypatch.setattr(runtime, "TORCH_THREADS", 2)
        monkeypatch.setattr("loky.cpu_count", lambda: 2)
        setup(*cfgs, TrainConfig(out=out, max_steps=2, eval_every=0, ngram=0, progress=False)).run()
        assert charloom.checkpoint.load_run(tmp_path / "run" / charloom.checkpoint.RESUME_FILE)[0].info["threads"] == 1
        monkeypatch.setattr(runtime, "idle_cpus", lambda *_: 2)  # quiet now
        t = setup(*cfgs, TrainConfig(out=out, max_steps=4, eval_every=0, ngram=0, progress=False, resume=True))
        assert torch.get_num_threads() == 1 and t.rt.note is None
        t.close()  # set up, never run: the folder is let go for the next
        setup(*cfgs, TrainConfig(out=out, max_steps=4, eval_every=0, ngram=0, progress=False, resume=True, threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


REAL_OTHER_WORK = runtime.other_work  # the real reading, before conftest's quiet machine replaces it


def test_a_run_that_chose_its_threads_keeps_them_to_the_cpus_other_work_leaves(monkeypatch):
    """Every WATCH_SECONDS the watch reads the other work on the CPUs: beside a job that takes two thirds of a CPU
    (what a one-thread job gets beside two threads) one thread goes, and it comes back only once that work leaves
    the CPU all but a quarter (between, the count stays). A reading between the intervals is never taken, the run
    keeps at least one thread, and the CPUs counted are those the reading covers, not the threads torch may take
    (a container's quota: other work elsewhere on the host leaves the run its threads)."""
    threads, now, other, readings = torch.get_num_threads(), [0.0], [0.0], []

    def reading() -> tuple[float, int]:
        readings.append(now[0])
        return other[0], 2

    try:
        torch.set_num_threads(2)
        watch = runtime.ThreadWatch(2, reading, every=5.0, clock=lambda: now[0])
        for t, work, expected in [(4.9, 1.0, 2), (5.0, 0.4, 2), (10.0, 0.67, 1), (15.0, 1.0, 1), (20.0, 0.4, 1),
                                  (25.0, 3.0, 1), (30.0, 0.1, 2)]:
            now[0], other[0] = t, work
            note = watch.check()
            assert torch.get_num_threads() == expected, t
            if t in (10.0, 30.0):
                assert note == (f"threads: {expected} of the 2 CPUs this process may use from here on: other work now "
                                f"takes {work:.1f} of 2")
            else:
                assert note is None, t
        assert readings == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
        quota = runtime.ThreadWatch(2, lambda: (8.0, 64), every=0.0)
        assert quota.check() is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.alone
def test_the_reading_counts_other_processes_work_and_not_this_ones():
    """A process that spins on one CPU reads as about one CPU of other work; this process spinning reads as
    none (its own time is taken away). Each against the same reading of the machine at rest just before."""
    import time

    reading = REAL_OTHER_WORK()
    time.sleep(0.5)
    rest, cpus = reading()
    assert cpus == len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus >= 1
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    time.sleep(0.3)  # the interpreter started
    reading()
    spin.wait()
    assert 0.6 < reading()[0] - rest < 1.4
    reading()
    t = time.monotonic()
    while time.monotonic() - t < 1.0:
        pass
    assert reading()[0] - rest < 0.4


def test_only_a_cpu_run_that_chose_its_threads_is_watched(monkeypatch, text_file, tmp_path):
    """--threads is taken as given and never moved; a run that chose its own moves as the reading says, says so on
    the terminal, and goes on following the other work once resumed, from the count it last had."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(runtime, "TORCH_THREADS", 2)
    monkeypatch.setattr("loky.cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "idle_cpus", lambda *_: 2)
    monkeypatch.setattr(runtime, "WATCH_SECONDS", 0.0)
    monkeypatch.setattr(runtime, "other_work", lambda: lambda: (1.0, 2))  # a job beside it takes a whole CPU
    cfgs = [CorpusConfig(source=str(text_file)), BatchConfig(batch_size=2, seq_len=8), ModelConfig(hidden_size=8)]
    out = str(tmp_path / "run")
    try:
        assert runtime.Runtime.start("cpu", "fp32", threads=1).watch is None
        assert runtime.Runtime.start("cpu", "fp32", threads=0, watch=False, follow=False).watch is None
        lines = []
        monkeypatch.setattr(charloom.hooks, "say", lines.append)
        t = setup(*cfgs, TrainConfig(out=out, max_steps=3, eval_every=0, ngram=0))
        assert t.rt.watch is not None and torch.get_num_threads() == 2
        t.run()
        assert torch.get_num_threads() == 1
        assert "threads: 1 of the 2 CPUs this process may use from here on: other work now takes 1.0 of 2" in lines
        info = charloom.checkpoint.load_run(tmp_path / "run" / charloom.checkpoint.RESUME_FILE)[0].info
        assert info["threads"] == 1 and info["threads_chosen"] is True
        monkeypatch.setattr(runtime, "other_work", lambda: lambda: (0.0, 2))  # the job has ended
        torch.set_num_threads(2)
        t = setup(*cfgs, TrainConfig(out=out, max_steps=6, eval_every=0, ngram=0, resume=True))
        assert t.rt.watch is not None and torch.get_num_threads() == 1  # resumed at the count it had
        t.run()
        assert torch.get_num_threads() == 2
        t = setup(*cfgs, TrainConfig(out=out, max_steps=9, eval_every=0, ngram=0, resume=True, threads=1))
        assert t.rt.watch is None
    finally:
        torch.set_num_threads(threads)


def test_a_cpu_count_variable_that_is_not_a_number_is_one_line_naming_it(monkeypatch):
    """loky reads LOKY_MAX_CPU_COUNT for the CPUs a process may use; a value it cannot read is named, where it was a
    traceback."""
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "abc")
    with pytest.raises(CharloomError, match=r"^LOKY_MAX_CPU_COUNT: 'abc' is not a whole number of CPUs"):
        runtime.set_threads(0)


@pytest.mark.parametrize("slower, rounds", [(10.0, 1), (1.2, runtime.PROBE_ROUNDS), (0.5, runtime.PROBE_REPEATS)])
def test_the_probe_stops_at_once_for_a_kernel_many_times_slower(monkeypatch, slower, rounds):
    """bf16 emulated where the CPU has none (a GRU on an AVX2 CPU: 8x slower) would cost seconds a round over all
    of PROBE_ROUNDS; a kernel a little slower may be unlucky and is timed on; a faster one takes PROBE_REPEATS."""
    clock = {"now": 0.0}
    calls = {"fp32": 0, "bf16": 0}

    def fake_step(device, cell):
        def step(precision):
            calls[precision] += 1
            clock["now"] += 1.0 if precision == "fp32" else slower
        return step

    monkeypatch.setattr(runtime, "_probe_step", fake_step)
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock["now"])
    runtime.speedup.cache_clear()
    try:
        assert runtime.speedup("cpu", "gru", "bf16") == pytest.approx(1 / slower)
    finally:
        runtime.speedup.cache_clear()
    assert calls == {"fp32": rounds + 1, "bf16": rounds + 1}  # each warmed up once
