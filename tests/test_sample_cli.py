import json
import os
import subprocess
import sys

import pytest

import charloom
from charloom.novelty import Novelty

TWEET = "@amy Thanks for the follow, have a great day!"


@pytest.fixture(scope="module")
def recited(tmp_path_factory):
    """A records model that has learned one tweet by heart (and the file it learned it from)."""
    folder = tmp_path_factory.mktemp("recite")
    src = folder / "tweets.txt"
    src.write_text(TWEET + "\n")
    os.environ.setdefault("CHARLOOM_CACHE_DIR", str(folder / "cache"))
    charloom.train(source=str(src), records=True, out=str(folder / "run"), max_steps=150, batch_size=1,
                   hidden_size=64, num_layers=1, embedding=0, val_fraction=0.0, eval_every=0, lr=1e-2, warmup=0,
                   schedule="constant", sample_length=0, progress=False)
    return folder / "run", src


def run(*args, stdin=None):
    p = subprocess.run([sys.executable, "-m", "charloom", *args], capture_output=True, text=True, input=stdin,
                       timeout=120, env=os.environ.copy())
    return p.returncode, p.stdout, p.stderr


def test_novelty_marks_a_recited_line_as_copied(recited):
    run_dir, src = recited
    ck = charloom.load(run_dir)
    nov = Novelty.for_checkpoint(ck)
    assert nov.check(TWEET).new is False and nov.check(TWEET).copied == [TWEET]
    assert nov.check("@amy Thanks for nothing").new is True
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--greedy", "--novelty")
    assert code == 0, err
    assert out.strip() == TWEET
    assert "0 of 1 samples are new (0%)" in err and "copies the training corpus" in err


def test_jsonl_output_holds_each_sample_with_its_settings(recited, tmp_path):
    run_dir, _ = recited
    out = tmp_path / "s.jsonl"
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--num-samples", "3", "--temperature", "0.5",
                       "--temperature", "1.5", "--seed", "4", "--length", "60", "--output", str(out), "--novelty")
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6
    assert [r["temperature"] for r in rows] == [0.5] * 3 + [1.5] * 3
    assert [r["seed"] for r in rows[:3]] == [4, 5, 6]
    assert all(set(r) >= {"text", "start", "top_k", "top_p", "new"} and len(r["text"]) <= 60 for r in rows)


def test_labelled_temperature_sweep_and_several_starts(recited):
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--start", "@amy", "--start", "Thanks",
                         "--temperature", "0.3", "--temperature", "1.8", "--length", "20", "--seed", "1")
    assert code == 0, err
    headers = [ln for ln in out.splitlines() if ln.startswith("--- temperature")]
    assert headers == ["--- temperature 0.3, start '@amy' ---", "--- temperature 0.3, start 'Thanks' ---",
                       "--- temperature 1.8, start '@amy' ---", "--- temperature 1.8, start 'Thanks' ---"]


def test_interactive_mode_continues_each_line(recited):
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--interactive", "--greedy", stdin="@amy\n@amy Th\n\n")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == TWEET and lines[1] == TWEET
    assert err.count("start text") >= 2


def test_interactive_mode_refuses_a_temperature_sweep(recited):
    """Each line typed is written once: the sweep's other temperatures would be dropped."""
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--interactive", "--temperature", "0",
                         "--temperature", "1.5", stdin="@amy\n")
    assert code == 2 and out == "" and err.strip() == ("charloom: error: --temperature: with --interactive each line "
                                                      "typed is written at one temperature; give one")


def test_unknown_start_character_is_a_note_not_a_crash(recited):
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--start", "@amy 🎉", "--length", "10", "--seed", "1")
    assert code == 0 and "'🎉' is not in the model's vocabulary; read as <unk>" in err and "Traceback" not in err


def test_a_start_character_a_strict_model_refuses_stops_before_anything_is_written(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=2, unknown="error", **tiny)
    start = text_file.read_text()[:3] + "🎉"
    code, out, err = run("sample", "--checkpoint", str(tmp_path / "run"), "--start", start, "--length", "10")
    assert code == 2 and out == "" and "--start: character '🎉' (U+1F389) at position 3" in err
    kept = tmp_path / "kept.txt"
    kept.write_text("from before\n")
    code, out, err = run("sample", "--checkpoint", str(tmp_path / "run"), "--start", start, "--start", "",
                         "--temperature", "0.5", "1", "--output", str(kept))
    assert code == 2 and out == "" and kept.read_text() == "from before\n"  # refused before the file is opened


def test_bad_sample_options_are_one_line_errors(recited):
    run_dir, _ = recited
    for args, needle in ((["--top-p", "0"], "top_p (--top-p): must be in (0, 1]"), (["--temperature", "-1"], "temperature"),
                         (["--num-samples", "0"], "n (--num-samples): must be >= 1")):
        code, _, err = run("sample", "--checkpoint", str(run_dir), *args)
        assert code == 2 and needle in err and "Traceback" not in err
    code, _, err = run("sample", "--checkpoint", str(run_dir / "nope"))
    assert code == 2 and "no such model file" in err


def test_sample_flags_build_one_options_object_per_generation():
    from charloom.cli import build_parser, options
    from charloom.config import ConfigError, SampleConfig, SampleOptions

    ns = build_parser().parse_args(["sample", "--checkpoint", "m", "--start", "a", "--start", "b", "--temperature",
                                    "0.3", "--temperature", "1", "--num-samples", "3", "--length", "7", "--top-k", "5",
                                    "--top-p", "0.9", "--repetition-penalty", "1.2", "--stop", "\\n", "--stop", "x",
                                    "--seed", "4"])
    base = options(ns, SampleOptions)
    assert base == SampleOptions(length=7, n=3, top_k=5, top_p=0.9, repetition_penalty=1.2, stop=("\n", "x"), seed=4)
    runs = options(ns, SampleConfig).each(base)
    assert [(o.temperature, o.start) for o in runs] == [(0.3, "a"), (0.3, "b"), (1.0, "a"), (1.0, "b")]
    assert all(o.replace(start="", temperature=base.temperature) == base for o in runs)
    greedy = build_parser().parse_args(["sample", "--checkpoint", "m", "--greedy"])
    assert [o.temperature for o in options(greedy, SampleConfig).each(options(greedy, SampleOptions))] == [0.0]
    both = build_parser().parse_args(["sample", "--checkpoint", "m", "--temperature", "0.3", "--greedy"])
    with pytest.raises(ConfigError, match=r"^greedy: means --temperature 0, and --temperature 0.3 was given too"):
        options(both, SampleConfig)  # one of the two would be dropped


def test_jsonl_rows_are_the_options_with_each_samples_seed(recited, tmp_path):
    from charloom.config import SampleOptions

    run_dir, _ = recited
    out = tmp_path / "s.jsonl"
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--start", "@amy", "--num-samples", "2", "--seed", "9",
                       "--length", "30", "--top-k", "3", "--stop", "!", "--output", str(out))
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    opts = SampleOptions(start="@amy", n=2, seed=9, length=30, top_k=3, stop=("!",))
    for i, row in enumerate(rows):
        assert {k: row.pop(k) for k in ("text", "index", "checkpoint")}["index"] == i
        assert row == {**opts.to_dict(), "seed": 9 + i}


def test_undecodable_start_or_stop_is_a_one_line_error(recited):
    run_dir, _ = recited
    bad = b"ok\xff".decode("utf-8", "surrogateescape")  # what an invalid UTF-8 argument becomes
    for flag, needle in (("--start", "start (--start): U+DCFF at position 2 is a lone surrogate"),
                         ("--stop", "stop[0] (--stop): U+DCFF at position 2 is a lone surrogate")):
        code, _, err = run("sample", "--checkpoint", str(run_dir), flag, bad, "--length", "5")
        assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_novelty_judges_the_sample_with_its_start_text(recited):
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--start", "@amy", "--greedy", "--novelty")
    assert code == 0, err
    assert out.strip() == TWEET  # the start and its continuation together are the training record
    assert "0 of 1 samples are new (0%)" in err and f"copies the training corpus: {TWEET!r}" in err


def test_more_samples_than_memory_holds_are_refused_up_front(recited):
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--num-samples", "10000000")
    assert code == 2 and out == "" and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("charloom: error: n (--num-samples) and length (--length): 10,000,000 samples of 500 ")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("count", ["1", "3"])
def test_an_output_that_cannot_be_written_is_one_line(recited, count):
    run_dir, _ = recited
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--output", "/dev/full", "--num-samples", count,
                       "--length", "20")
    assert code == 2 and err == "charloom: error: --output: cannot write /dev/full (No space left on device)\n"


def test_undecodable_bytes_typed_in_interactive_mode_are_one_line(recited):
    run_dir, _ = recited
    p = subprocess.run([sys.executable, "-m", "charloom", "sample", "--checkpoint", str(run_dir), "--interactive"],
                       input=b"@a\xffmy\n", capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # a strict UTF-8 stdin, as in a UTF-8 locale
    err = p.stderr.decode()
    assert p.returncode == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.endswith("charloom: error: --interactive: the line typed is not valid utf-8 (bytes ff at byte 2)\n")


def test_output_never_replaces_a_model_file(recited, tmp_path):
    """--output naming the model being read (or any model file) would leave sample text where the model was: it
    is refused before anything is written; an upper-case .JSONL still writes JSON lines."""
    run_dir, _ = recited
    model = run_dir / "model.safetensors"
    before = model.read_bytes()
    for target in (model, tmp_path / "other.safetensors", tmp_path / "m.onnx"):
        code, _, err = run("sample", "--checkpoint", str(run_dir), "--length", "5", "--output", str(target))
        assert code == 2 and err.startswith(f"charloom: error: --output: {target} is a model file's name"), err
    assert model.read_bytes() == before and not (tmp_path / "other.safetensors").exists()
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--length", "5", "--output", str(tmp_path / "S.JSONL"))
    assert code == 0 and "text" in json.loads((tmp_path / "S.JSONL").read_text().splitlines()[0]), err
    for own in ("metrics.jsonl", "curves.png"):  # the run's curves are its record of training
        (run_dir / own).write_bytes(b"kept")
        code, _, err = run("sample", "--checkpoint", str(run_dir), "--length", "5", "--output", str(run_dir / own))
        assert code == 2 and err.startswith(f"charloom: error: --output: {run_dir / own} is a file of the run"), err
        assert (run_dir / own).read_bytes() == b"kept"
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--length", "5", "--color", "--output",
                       str(tmp_path / "c.txt"))
    assert code == 2 and err.strip() == ("charloom: error: --color: not with --output (the colours are for a person "
                                         "reading a terminal)") and not (tmp_path / "c.txt").exists()


def test_interactive_with_a_start_text_is_refused_not_ignored(recited):
    run_dir, _ = recited
    code, out, err = run("sample", "--checkpoint", str(run_dir), "--interactive", "--start", "fox", stdin="@amy\n")
    assert code == 2 and out == ""
    assert err.strip() == ("charloom: error: --start: with --interactive the start texts are the lines typed; give "
                           "one or the other")


def test_an_onnx_model_says_it_has_no_n_gram_and_refuses_ngram(recited, tmp_path, capsys):
    """An ONNX file holds the network alone: left to its default, --ngram gives a note after the samples (which are
    the model file's with --no-ngram); given, it is refused naming the flag and the file."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from charloom.cli import main

    run_dir, _ = recited
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(onnx_file)]) == 0
    capsys.readouterr()
    args = ["sample", "--start", "@amy", "--length", "30", "--seed", "3", "--num-samples", "2"]
    assert main([*args, "--checkpoint", str(run_dir), "--no-ngram"]) == 0
    alone = capsys.readouterr().out
    assert main([*args, "--checkpoint", str(onnx_file)]) == 0
    out, err = capsys.readouterr()
    assert out == alone
    assert err == (f"charloom: note: {onnx_file} is an ONNX file, which holds no n-gram: the samples are the "
                   f"network's alone, without the n-gram its model file mixes in (--no-ngram says so, without "
                   f"this note)\n")
    assert main([*args, "--checkpoint", str(onnx_file), "--no-ngram"]) == 0
    assert capsys.readouterr() == (alone, "")  # asked for the network alone: nothing to say
    assert main([*args, "--checkpoint", str(onnx_file), "--ngram"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"charloom: error: --ngram: {onnx_file} is an ONNX file, which holds no n-gram")
    assert main([*args, "--checkpoint", str(run_dir)]) == 0
    assert "n-gram" not in capsys.readouterr().err  # a model file mixes its own in: no note
    ck = charloom.load(run_dir)
    assert ck.mixture is not None
    bare = tmp_path / "bare.safetensors"
    charloom.checkpoint.save(bare, ck.model, ck.vocab, records=ck.records, info=ck.info)  # the network alone
    assert main(["export", "--checkpoint", str(bare), "--out", str(tmp_path / "bare.onnx")]) == 0
    capsys.readouterr()
    assert main([*args, "--checkpoint", str(tmp_path / "bare.onnx")]) == 0
    assert capsys.readouterr() == (alone, "")  # its model had no n-gram: nothing was left out


@pytest.mark.parametrize("command", [["sample", "--length", "5"], ["info", "--samples", "0"]])
def test_a_command_that_runs_a_model_takes_the_threads_other_work_leaves_idle(recited, monkeypatch, capsys, command):
    """As a training run does at its start: with every CPU but one busy, sampling or a report runs on one thread
    (threads that wait for a busy CPU stalled a batch-1 sample 16-fold)."""
    import torch

    from charloom import runtime
    from charloom.cli import main

    folder, _ = recited
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 2)  # two CPUs, on any machine the test runs on
    monkeypatch.setattr(runtime, "idle_cpus", lambda *_: 1)
    try:
        torch.set_num_threads(2)
        path = ["--checkpoint", str(folder)] if command[0] == "sample" else [str(folder)]
        assert main([command[0], *path, *command[1:]]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_samples_written_without_a_seed_record_one_that_makes_them_again(recited, tmp_path):
    """As the server says the seed it drew: a record with no seed could not be made again."""
    run_dir, _ = recited
    out = tmp_path / "s.jsonl"
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--num-samples", "2", "--length", "30",
                       "--output", str(out))
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert isinstance(rows[0]["seed"], int) and rows[1]["seed"] == rows[0]["seed"] + 1
    again = tmp_path / "again.jsonl"
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--length", "30", "--seed", str(rows[1]["seed"]),
                       "--output", str(again))
    assert code == 0, err
    assert json.loads(again.read_text())["text"] == rows[1]["text"]


def test_each_line_typed_draws_its_own_seed_when_samples_are_written(recited, tmp_path):
    run_dir, _ = recited
    out = tmp_path / "typed.jsonl"
    code, _, err = run("sample", "--checkpoint", str(run_dir), "--interactive", "--length", "20", "--output", str(out),
                       stdin="@amy\n@amy\n")
    assert code == 0, err
    seeds = [json.loads(x)["seed"] for x in out.read_text().splitlines()]
    assert len(seeds) == 2 and all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]
