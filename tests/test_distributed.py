import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import charloom
from charloom import checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("order", ["shuffle", "contiguous"])
def test_two_cpu_processes_keep_identical_weights_and_learn(tmp_path, text_file, order):
    p = torchrun(str(WORKER), str(tmp_path), str(text_file), order)
    assert p.returncode == 0, p.stderr[-3000:]
    w0 = identical_weights(tmp_path)
    losses = {r: [float(x) for x in metadata(tmp_path, r)["losses"].split(",")] for r in (0, 1)}
    assert losses[0] != losses[1]  # each process read its own batches
    first, last = sum(losses[0][:5]) / 5, sum(losses[0][-5:]) / 5
    assert last < 0.85 * first  # the loss falls (40 small steps: from about 3.6 to 2.9 nats)
    ck = charloom.load(tmp_path / "run" / "last.safetensors")
    assert ck.info["step"] == 40 and torch.equal(ck.model.state_dict()["head.weight"], w0["head.weight"])
    assert {f"rng.torch.r{r}" for r in (0, 1)} <= set(ck.tensors)


def identical_weights(folder):
    """Rank 0's saved weights, after checking rank 1 saved the very same."""
    w0, w1 = load_file(folder / "rank0.safetensors"), load_file(folder / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between the two processes"
    return w0


def metadata(folder, rank):
    with safe_open(folder / f"rank{rank}.safetensors", "pt") as f:
        return f.metadata()


def test_processes_whose_clocks_disagree_cut_and_stop_the_same_batches(tmp_path, text_file):
    # the second process's clock runs 4x fast: alone, it would leave the early pieces and the budget first
    p = torchrun(str(WORKER), str(tmp_path), str(text_file), "shuffle", "clock", timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    identical_weights(tmp_path)
    steps = {int(metadata(tmp_path, r)["steps"]) for r in (0, 1)}
    assert len(steps) == 1  # both stopped at the same batch
    _, run = checkpoint.load_run(tmp_path / "run" / "last.safetensors")
    (batches,) = steps
    updates = {int(st["step"]) for st in run.optimizer["state"].values()}
    assert len(updates) == 1 and batches < updates.pop() < 4 * batches  # pieces early, whole batches later


def test_a_stop_asked_by_one_process_stops_all_at_that_step_named_alike(tmp_path, text_file):
    p = torchrun(str(WORKER), str(tmp_path), str(text_file), "shuffle", "stop", timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    identical_weights(tmp_path)
    assert [(metadata(tmp_path, r)["steps"], metadata(tmp_path, r)["stopped_by"]) for r in (0, 1)] == \
        [("3", "callback")] * 2
    assert charloom.load(tmp_path / "run" / "last.safetensors").info["stopped_by"] == "callback"


def test_torchrun_cli_trains_and_resumes(tmp_path, text_file):
    out = tmp_path / "run"
    common = [str(text_file), "--out", str(out), "--hidden", "16", "--layers", "1", "--batch-size", "4",
              "--seq-len", "16", "--eval-every", "5", "--sample-length", "0"]
    p = torchrun("-m", "charloom", "train", *common, "--max-steps", "10")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("parameters, on") == 1 and p.stdout.count("model file ") == 1  # only rank 0 prints
    p = torchrun("-m", "charloom", "train", *common, "--max-steps", "14", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert charloom.load(out / "last.safetensors").info["step"] == 14
    single = subprocess.run([sys.executable, "-m", "charloom", "train", *common, "--max-steps", "20", "--resume"],
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 2 and "trained with 2 process(es), this launch has 1" in single.stderr


def test_torchrun_fine_tunes_from_a_parent(tmp_path, text_file):
    common = ["--hidden", "16", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--eval-every", "5",
              "--sample-length", "0"]
    charloom.train(source=str(text_file), out=str(tmp_path / "parent"), max_steps=5, hidden_size=16, batch_size=4,
                   seq_len=16, sample_length=0, progress=False)
    new = tmp_path / "new.txt"
    new.write_text(text_file.read_text().replace("e", "é"))  # a character the parent never saw
    p = torchrun("-m", "charloom", "train", str(new), "--out", str(tmp_path / "child"), "--init-from",
                 str(tmp_path / "parent"), "--extend-vocab", "--max-steps", "6", *common[2:])
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("1 new character added to its vocabulary as new ids: 'é'") == 1  # said once, by rank 0
    child = charloom.load(tmp_path / "child")
    assert child.info["step"] == 6 and child.info["parent"]["step"] == 5 and child.vocab.chars[-1] == "é"
