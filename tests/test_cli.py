import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import charloom
from charloom.cli import main


def run(*args, cwd=None):
    """The real console entry in a fresh process: exit code, stdout, stderr."""
    p = subprocess.run([sys.executable, "-m", "charloom", *args], capture_output=True, text=True, cwd=cwd,
                       env=os.environ.copy(), timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_corpora_lists_both_with_sizes(capsys):
    assert main(["corpora"]) == 0
    out = capsys.readouterr().out
    assert "shakespeare" in out and "5,057,239" in out
    assert "names" in out and "5,163" in out


def test_corpus_info_on_names_reads_records_without_flag(capsys):
    assert main(["corpus-info", "names", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "records" and info["records"] == 5163
    assert info["train"] + info["validation"] == 5163
    assert info["vocab_size"] == info["vocab_characters"] + 4


def test_corpus_info_counts_the_text_a_default_run_leaves_out_for_its_mixture(tmp_path, capsys):
    """A continuous text: train + validation + the fit text make the whole corpus, and the fit text is named."""
    p = tmp_path / "book.txt"
    p.write_text("".join(f"line {i} of the book\n" for i in range(20_000)))
    assert main(["corpus-info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fit"] > 0 and info["train"] + info["validation"] + info["fit"] == info["characters"]
    assert main(["corpus-info", str(p)]) == 0
    assert f"{info['fit']:,} left out of training" in capsys.readouterr().out
    assert main(["corpus-info", str(p), "--json", "--fit-chars", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["fit"] == 0


def test_corpus_info_csv_columns_by_name(tmp_path, capsys):
    p = tmp_path / "news.csv"
    p.write_text('label,title,description\n3,"Wall St. Bears","Short-sellers are back."\n4,"Comets","Planets."\n')
    assert main(["corpus-info", str(p), "--column", "title", "--column", "description", "--records",
                 "--json", "--batch-size", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 2
    assert info["characters"] == len("Wall St. Bears Short-sellers are back.") + len("Comets Planets.")


def test_separator_flag_understands_escapes(tmp_path, capsys):
    p = tmp_path / "t.txt"
    p.write_text("a\nb\n")
    # two lines read as records, then joined into one stream by a typed "\n\n": a, newline, newline, b
    assert main(["corpus-info", str(p), "--format", "lines", "--separator", "\\n\\n", "--json",
                 "--batch-size", "1", "--seq-len", "2", "--val-fraction", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["characters"] == 4


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\n\xff")
    code, out, err = run("corpus-info", str(p))
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "bad.txt: byte offset 3" in err


@pytest.mark.parametrize("args, needle", [
    (["corpus-info", "no_such_corpus"], "no_such_corpus: no such file, folder or bundled corpus"),
    (["corpus-info", "names", "--batch-size", "-1"], "batch_size (--batch-size): must be 0 (chosen) or positive"),
    (["corpus-info", "names", "--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
    (["corpus-info", "names", "--order", "sideways"], "argument --order: invalid choice"),
    (["train", "names", "--sample-temperature", "hot"], "argument --sample-temperature: 'hot' is not a number"),
    (["train", "names", "--head-hidden", "-2"], "head_hidden (--head-hidden): must be -1 (as wide as the recurrent layer), 0 (none) "
                                                "or from 1 to 65,536, got -2"),
])
def test_clear_errors_for_bad_flags(args, needle):
    code, out, err = run(*args)
    assert code == 2 and needle in err and "Traceback" not in err


def test_a_zero_time_budget_is_one_line_not_a_run_that_never_ends():
    code, out, err = run("train", "names", "--max-time", "0")
    assert code == 2 and err == "charloom: error: max_time (--max-time): must be longer than zero, got '0'\n"


def test_a_duration_past_a_floats_range_is_refused_not_read_as_no_budget():
    from charloom.config import ConfigError, TrainConfig

    for text in ("9" * 400 + "h", "9" * 400):
        with pytest.raises(ConfigError, match=r"^max_time: '9{40}'... is too long a duration$"):
            TrainConfig(max_time=text)


def test_a_line_break_inside_a_message_is_kept_on_its_one_line(tmp_path, capsys):
    """A codec's own message may end in the character it choked on: a newline, here."""
    (tmp_path / "names.txt").write_text("anna\nbob\n")
    assert main(["corpus-info", str(tmp_path / "names.txt"), "--records", "--encoding", "punycode",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'\\n'" in err and err.startswith("charloom: error: "), err


TINY = ["--hidden", "16", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--sample-length", "0"]


@pytest.mark.parametrize("flag, width", [(None, 16), ("0", 0), ("24", 24)])
def test_the_head_flag_reaches_the_model_file(tmp_path, text_file, flag, width):
    out = tmp_path / "run"
    given = ["--head-hidden", flag] if flag else []
    assert main(["train", str(text_file), "--out", str(out), *TINY, *given, "--max-steps", "2", "--eval-every", "0",
                 "--no-progress", "--ngram", "0"]) == 0
    model = charloom.load(out).model
    assert model.cfg.head_width == width and (model.readout is None) == (width == 0)
    assert model.head.in_features == (width or 16)


@pytest.mark.parametrize("where", ["a_file", "a_file/run", "/proc/charloom-run"])
def test_an_out_folder_that_cannot_be_written_is_refused_before_any_step(tmp_path, text_file, where):
    (tmp_path / "a_file").write_text("not a folder")
    out = where if where.startswith("/") else str(tmp_path / where)
    code, stdout, err = run("train", str(text_file), "--out", out, "--max-steps", "200", *TINY)
    assert code == 2 and err.startswith("charloom: error: out (--out): ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "step" not in stdout


def test_quiet_training_prints_only_where_the_model_went_and_its_report(tmp_path, text_file):
    out = tmp_path / "run"
    code, stdout, err = run("train", str(text_file), "--out", str(out), "--max-steps", "6", "--eval-every", "3",
                            "--sample-length", "30", "--no-progress", *TINY[:-2])
    assert code == 0, err
    best = charloom.load(out).info["best_val_bpc"]
    first, _, rest = stdout.partition("\n")
    assert first == f"model: {out / 'model.safetensors'} (best validation {best:.3f} bpc)" and err == ""
    code, report, err = run("info", str(out))
    assert code == 0 and rest == report  # the report `charloom info` prints, samples and all
    assert "ended: budget" in rest and rest.count("\n---\n") == 2


def test_resuming_a_run_that_used_its_budget_says_so_and_how_to_extend_it(tmp_path, text_file):
    out = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(out), max_steps=4, batch_size=4, seq_len=16, hidden_size=16,
                   num_layers=1, embedding=8, sample_length=0, progress=False)
    code, stdout, err = run("train", "--out", str(out), "--resume")
    assert code == 0, err
    assert (f"nothing to do: the run in {out} already reached its budget (--max-steps 4) at step 4; to train on, "
            f"resume with a larger --max-steps") in stdout
    assert charloom.load(out / "last.safetensors").info["step"] == 4


def test_too_short_corpus_from_the_cli(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("tiny corpus")
    code, out, err = run("corpus-info", str(p), "--seq-len", "64")
    assert code == 2 and "fewer than seq_len + 1 = 65" in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    # the figures of the text still show: only the split these options would make cannot be made
    assert "characters       11" in out and "vocabulary       15 ids" in out and "split" not in out
    code, out, err = run("corpus-info", str(p), "--seq-len", "64", "--json")
    info = json.loads(out)
    assert code == 2 and info["characters"] == 11 and info["train"] is None
    assert "fewer than seq_len + 1 = 65" in info["split_error"] and info["split_error"] in err


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "charloom")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "corpus-info" in p.stdout


def test_sigterm_finishes_the_step_and_saves(tmp_path, text_file):
    out = tmp_path / "run"
    cmd = [sys.executable, "-u", "-m", "charloom", "train", str(text_file), "--out", str(out), "--hidden", "16",
           "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--max-time", "5m", "--eval-every", "0",
           "--sample-length", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    first = proc.stdout.readline()  # printed when training starts
    assert "parameters" in first
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # saved, and a script can tell the run did not finish
    assert "stopped by SIGTERM" in out_text
    ck = charloom.load(out / "last.safetensors")
    assert ck.info["step"] > 0 and charloom.load(out).info["step"] == ck.info["step"]


def test_cli_train_sample_eval(tmp_path, text_file):
    def run(*args):
        p = subprocess.run([sys.executable, "-m", "charloom", *args], capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr

    out = tmp_path / "run"
    code, stdout, err = run("train", str(text_file), "--out", str(out), "--hidden", "16", "--layers", "1",
                            "--batch-size", "4", "--seq-len", "16", "--max-steps", "10", "--eval-every", "5",
                            "--no-progress")
    assert code == 0, err
    code, a, err = run("sample", "--checkpoint", str(out), "--start", "All", "--length", "40", "--seed", "3")
    assert code == 0, err
    assert a.startswith("All") and a.endswith("\n") and len(a) == 3 + 40 + 1  # start, 40 characters, newline
    assert run("sample", "--checkpoint", str(out), "--start", "All", "--length", "40", "--seed", "3")[1] == a
    code, js, err = run("eval", "--checkpoint", str(out), str(text_file), "--json")
    assert code == 0, err
    figures = json.loads(js)
    ck = charloom.load(out)
    whole = charloom.evaluate(ck.model, charloom.batching.eval_windows(
        charloom.Stream(ck.vocab.encode_array(text_file.read_text()), [(0, len(text_file.read_text()))]),
        1024, 1, ck.vocab.pad_id))
    assert figures["network_bpc"] == pytest.approx(whole.bpc, abs=1e-4)  # the network alone, beside the model
    assert figures["bpc"] < figures["network_bpc"]  # with the n-gram that has read this very text
    code, js, err = run("eval", "--checkpoint", str(out), str(text_file), "--json", "--no-ngram")
    assert code == 0 and json.loads(js)["bpc"] == pytest.approx(whole.bpc, abs=1e-4) and "network_bpc" not in js
    assert figures["characters_scored"] == len(text_file.read_text()) - 1
    other = tmp_path / "other.txt"
    other.write_text("All: Speak! 🎉 zzz")
    code, js, err = run("eval", "--checkpoint", str(out), str(other), "--json")
    assert code == 0 and json.loads(js)["unknown_characters"] == len("!🎉")  # "z" is in "Citizen"
    code, _, err = run("train", str(text_file), "--out", str(out), "--resume", "--max-steps", "12", "--no-progress")
    assert code == 0, err
    assert charloom.load(out / "last.safetensors").info["step"] == 12


def test_eval_adapt_prints_the_adapted_figure_beside_the_static_one(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("abcabd\n" * 40)
    out = tmp_path / "run"
    charloom.train(source=str(src), out=str(out), max_steps=4, batch_size=2, seq_len=8, hidden_size=8,
                   embedding=4, eval_every=0, sample_length=0, progress=False, val_fraction=0.0)
    before = (out / "model.safetensors").read_bytes()
    code, js, err = run("eval", "--checkpoint", str(out), str(src), "--json", "--adapt", "--adapt-lr", "0.5",
                        "--adapt-segment", "8")
    assert code == 0, err
    figures = json.loads(js)
    ck = charloom.load(out)
    corpus = charloom.load_corpus(charloom.CorpusConfig(source=str(src)), vocab=ck.vocab)
    static = charloom.score(ck.model, corpus, mixture=ck.mixture)
    adapted = charloom.evaluation.score_adapted(
        ck.model, corpus, charloom.EvalConfig(adapt=True, adapt_lr=0.5, adapt_segment=8), mixture=ck.mixture)
    assert figures["bpc"] == pytest.approx(static.bpc, abs=1e-4)
    assert figures["adapted_bpc"] == pytest.approx(adapted.bpc, abs=1e-4)
    assert figures["adapted_network_bpc"] < figures["network_bpc"]  # the network learns the text as it reads
    assert figures["adapt"] == {"adapt_lr": 0.5, "adapt_segment": 8, "adapt_decay": 0.0}
    assert (out / "model.safetensors").read_bytes() == before
    code, text, err = run("eval", "--checkpoint", str(out), str(src), "--adapt")
    assert code == 0 and "bits per character" in text.splitlines()[0] and "adapted while reading" in text
    code, _, err = run("eval", "--checkpoint", str(out), str(src), "--adapt", "--adapt-lr", "1e30")
    assert code == 2 and err.startswith("charloom: error: adapt_lr (--adapt-lr): the network diverged") and \
        f"(static, without adapting: {static.bpc:.4f} bits per character)" in err and err.count("\n") == 1
    code, _, err = run("eval", "--checkpoint", str(out), str(src), "--adapt-lr", "-1")
    assert code == 2 and err.strip() == "charloom: error: adapt_lr (--adapt-lr): must not be negative, got -1.0"


def test_no_help_states_a_default_twice(capsys):
    """Each flag's help says its default once: in its own words, or the value appended, never both."""
    import argparse
    import re

    from charloom.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "sample", "eval", "export", "serve"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        entries, entry = [], []  # one per flag: a line indented by two, and the lines indented further under it
        for line in capsys.readouterr().out.splitlines():
            if not line.startswith("   "):
                entries.append(" ".join(entry))
                entry = []
            entry.append(line.strip())
        entries.append(" ".join(entry))
        # "default" as a word, not in a flag's name (--default-length) nor closing "(0: torch's default)"
        twice = [e for e in entries if len(re.findall(r"(?<![\w-])default\b(?![)-])", e)) > 1]
        assert not twice, (name, twice)


def test_training_shortens_openmp_spinning_before_torch_loads_and_a_users_value_wins(tmp_path):
    """libgomp reads GOMP_SPINCOUNT once, when torch loads: `charloom train` runs with the CLI's count, set before
    torch is imported, other commands with libgomp's own, and a count the user set is left as it is."""
    from charloom import cli

    code = ("import os, sys\nfrom charloom.cli import build_parser, main\nbuild_parser().parse_args(sys.argv[1:])\n"
            "before = 'torch' in sys.modules\nmain(sys.argv[1:])\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), before, 'torch' in sys.modules)")
    run = ["train", "--max-steps", "1", "--hidden", "8", "--ngram", "0", "--out", str(tmp_path / "r"), "names"]
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code, *run], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == f"{cli.SPIN_COUNT} False True"  # set after parsing, before torch loads
    out = subprocess.run([sys.executable, "-c", code, "corpora"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "None False False"  # other commands keep libgomp's own
    out = subprocess.run([sys.executable, "-c", code, *run], env={**env, "GOMP_SPINCOUNT": "123"},
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "123 False True"


@pytest.mark.parametrize("argv, message", [
    (["train", "--threads", "-1"], "threads (--threads): must not be negative"),
    (["train", "--early-pieces", "65"], "early_pieces (--early-pieces): must be in [0, 64], got 65"),
    (["sample", "--checkpoint", "nowhere", "--temperature", "-1"], "temperature (--temperature): "),
    (["eval", "--checkpoint", "nowhere", "--adapt-lr", "-1"], "adapt_lr (--adapt-lr): must not be negative"),
    (["eval", "--checkpoint", "nowhere", "--adapt-segment", "64"],
     "adapt_segment (--adapt-segment): only means something with --adapt"),
    (["eval", "--checkpoint", "nowhere", "--adapt-lr", "0.1"],  # its default, but given
     "adapt_lr (--adapt-lr): only means something with --adapt"),
    (["sample", "--checkpoint", "nowhere", "--temperature", "nan"], "temperatures[0] (--temperature): nan is not"),
    (["sample", "--checkpoint", "nowhere", "--greedy", "--temperature", "0.5"],
     "greedy (--greedy): means --temperature 0, and --temperature 0.5 was given too"),
])
def test_a_value_a_config_refuses_is_named_by_its_flag(capsys, argv, message):
    """Checks live in the configs, which know fields, not flags: the CLI names the flag the user typed beside
    the field, once."""
    from charloom.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"charloom: error: {message}") and err.count("(--") == 1 and "\n" not in err


def test_a_message_naming_no_flag_of_its_command_is_left_as_it_is():
    """Only a field the command has a flag for is named by it: a field of another command's (train's lr, seen from
    sample), a positional argument, or an error that is not a config's stays as it was."""
    from charloom.cli import _flagged, build_parser, cmd_sample, cmd_train
    from charloom.errors import CharloomError, ConfigError

    parser = build_parser()
    sample, train = argparse.Namespace(run=cmd_sample), argparse.Namespace(run=cmd_train)
    assert _flagged(ConfigError("lr: must be positive"), parser, sample) == "lr: must be positive"
    assert _flagged(ConfigError("lr: must be positive"), parser, train) == "lr (--lr): must be positive"
    assert _flagged(ConfigError("source: no such file"), parser, train) == "source: no such file"
    assert _flagged(CharloomError("lr: must be positive"), parser, train) == "lr: must be positive"
    assert _flagged(ConfigError("no colon here"), parser, train) == "no colon here"


def test_eval_refuses_streams_that_would_not_fit_before_reading_the_text(model_dir, monkeypatch, capsys, tmp_path):
    """A stream's state does not depend on the text: too many streams are refused before the text is read (here it
    does not even exist), naming --streams."""
    from charloom import evaluation
    from charloom.cli import main

    monkeypatch.setattr(evaluation, "memory_cap", lambda: 1000)  # bytes: any state is too large
    assert main(["eval", "--checkpoint", str(model_dir), str(tmp_path / "nowhere.txt"), "--streams", "8"]) == 2
    assert capsys.readouterr().err.startswith("charloom: error: streams (--streams): 8 streams of this model's state")


def test_a_library_warning_is_one_line_naming_charloom(tmp_path):
    p = tmp_path / "rec.txt"
    p.write_text("\n".join(f"name {i}" for i in range(500)))
    args = ("corpus-info", str(p), "--records", "--cache-dir", str(tmp_path / "cache"))
    assert run(*args)[0] == 0
    (entry,) = (tmp_path / "cache" / "ids").iterdir()
    (entry / "meta.json").write_text("{")
    code, out, err = run(*args)
    assert code == 0 and "records          500" in out
    assert err.startswith("charloom: warning: ") and "are damaged" in err and err.count("\n") == 1, err


def test_eval_reads_a_text_as_the_model_trained_records_or_a_stream(tmp_path, capsys):
    """A model of records scores a file of them as records unless told otherwise; read as one stream, each
    line end would be a character the model never predicts and <eos> would never be scored."""
    names = "\n".join(["anna", "bob", "carla", "dmitri", "eve", "fatima"] * 40) + "\n"
    (tmp_path / "names.txt").write_text(names)
    charloom.train(source=str(tmp_path / "names.txt"), records=True, out=str(tmp_path / "run"), max_steps=20,
                   hidden_size=16, embedding=8, batch_size=8, eval_every=0, sample_length=0, progress=False)
    capsys.readouterr()
    figures = {}
    for flag in ([], ["--records"], ["--no-records"]):
        assert main(["eval", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "names.txt"), "--json",
                     *flag]) == 0
        figures[tuple(flag)] = json.loads(capsys.readouterr().out)
    assert figures[()] == figures[("--records",)] != figures[("--no-records",)]
    assert figures[()]["characters_scored"] == len(names)  # each name's characters and its <eos>


def test_only_charloom_warnings_are_made_one_line(capsys):
    from charloom.cli import _one_line
    from charloom.errors import CharloomWarning

    shown = []
    said = _one_line(lambda *a, **k: shown.append(a[1]))
    said(CharloomWarning("start text: 'Z' read as <unk>"), CharloomWarning, "f.py", 1)
    said(RuntimeWarning("divide by zero encountered in log"), RuntimeWarning, "f.py", 1)
    assert capsys.readouterr().err == "charloom: warning: start text: 'Z' read as <unk>\n"
    assert shown == [RuntimeWarning]  # another library's warning is shown as Python shows it
    assert issubclass(CharloomWarning, UserWarning)  # pytest.warns(UserWarning) and filters still take it


@pytest.mark.parametrize("source, argv, message", [
    ("names", ["--order", "contiguous"],
     "--order: only for continuous text, cut into windows; names is read as records"),
    ("text", ["--max-record-len", "10"], "--max-record-len: only for records; t.txt is read as one continuous text"),
    ("text", ["--overlong", "skip"], "--overlong: only for records"),
    ("text", ["--no-bucket"], "--no-bucket: only for records"),
    ("names", ["--label-dropout", "0.5"], "--label-dropout: only for labelled records"),
    ("names", ["--early-pieces", "4"], "--early-pieces: only for continuous text"),
    ("text", ["--no-carry-state"], "--no-carry-state: only with --order contiguous"),
    ("text", ["--fit-chars", "10000", "--ngram", "0"], "--fit-chars: leaves text out of training for the n-gram's "
                                                       "mixture, which --ngram 0 never fits"),
    ("text", ["--cell", "gru", "--forget-bias", "1"], "forget_bias (--forget-bias): only for --cell lstm"),
    ("text", ["--gram-buckets", "7"], "gram_buckets (--gram-buckets): only with --grams N"),
    ("text", ["--attention", "0", "--memory", "3"], "memory (--memory): only with an attention head"),
    ("text", ["--attention", "0", "--no-shifted-keys"], "shifted_keys (--shifted-keys): only with an attention"),
    ("text", ["--schedule", "constant", "--min-lr-ratio", "0.5"], "min_lr_ratio (--min-lr-ratio): the cosine"),
    # given at its default value: still a flag the user meant, and still never read
    ("names", ["--separator", "\\n"], "--separator: joins records or files into one stream; names is read as records"),
    ("names", ["--order", "shuffle"], "--order: only for continuous text"),
    ("names", ["--early-pieces", "0"], "--early-pieces: only for continuous text"),
    ("names", ["--late-pieces", "0"], "--late-pieces: only for continuous text"),
    ("names", ["--early-share", "0.3"], "--early-share: only for continuous text"),
    ("text", ["--bucket"], "--bucket: only for records"),
    ("text", ["--label-dropout", "0.1"], "--label-dropout: only for labelled records"),
    ("text", ["--carry-state"], "--carry-state: only with --order contiguous"),
    ("text", ["--cell", "gru", "--forget-bias", "0"], "forget_bias (--forget-bias): only for --cell lstm"),
    ("text", ["--gram-buckets", "8192"], "gram_buckets (--gram-buckets): only with --grams N"),
    ("text", ["--attention", "0", "--shifted-keys"], "shifted_keys (--shifted-keys): only with an attention"),
    ("text", ["--schedule", "constant", "--min-lr-ratio", "0.1"], "min_lr_ratio (--min-lr-ratio): the cosine"),
])
def test_a_batch_option_the_corpus_never_reads_is_refused_before_training(tmp_path, capsys, source, argv, message):
    """A flag meant to change the run, where the corpus or the run's other options never read it, is named rather
    than dropped."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    src = str(text) if source == "text" else source
    assert main(["train", src, "--out", str(tmp_path / "run"), "--max-steps", "1", "--hidden", "8",
                 "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"charloom: error: {message.replace('t.txt', str(text))}") and "\n" not in err
    assert not (tmp_path / "run").exists()  # the folder this start made goes with its lock


def test_corpus_info_names_a_batch_option_the_corpus_never_reads(capsys):
    assert main(["corpus-info", "names", "--json", "--order", "contiguous"]) == 2
    info = json.loads(capsys.readouterr().out)
    assert info["records"] > 1000 and info["split_error"].startswith("--order: only for continuous text")


@pytest.mark.parametrize("argv, flag", [(["train", "--max-time", "-1m"], "--max-time"),
                                        (["sample", "--checkpoint", "x", "--start", "-item"], "--start")])
def test_a_value_starting_with_a_dash_is_told_to_go_after_an_equals_sign(capsys, argv, flag):
    """argparse takes "-1m" or "-item" for a flag and says only that the flag expected a value."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"argument {flag}: expected one argument (a value that starts with '-' goes after '=': "
                        f"{flag}=-VALUE)")


def test_eval_names_a_label_option_on_a_model_of_continuous_text(tmp_path, model_dir, capsys):
    """Not the records check's 'drop --no-records', a flag the user never gave."""
    (tmp_path / "t.csv").write_text("text,label\nto be,A\n")
    assert main(["eval", "--checkpoint", str(model_dir), str(tmp_path / "t.csv"), "--column", "text",
                 "--label-column", "label"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"charloom: error: --label-column: {model_dir / 'model.safetensors'} was trained on continuous " \
                  f"text, which has no labels"


def test_a_max_length_below_the_default_length_says_which_to_lower():
    from charloom.config import ConfigError, ServeConfig

    with pytest.raises(ConfigError, match=r"^default_length: 500 \(its default\) is more than --max-length 100; "
                                          r"give --default-length 100 or less$"):
        ServeConfig(max_length=100)
    assert ServeConfig(max_length=100, default_length=100).default_length == 100


@pytest.mark.parametrize("argv", [
    ["train", "~nosuchuser-charloom/play.txt"], ["train", "--init-from", "~nosuchuser-charloom/run"],
    ["eval", "--checkpoint", "MODEL", "~nosuchuser-charloom/x"], ["sample", "--checkpoint", "~nosuchuser-charloom/run"],
    ["info", "~nosuchuser-charloom/run"], ["plot", "~nosuchuser-charloom/run", "--out", "c.png"],
])
def test_a_home_folder_of_no_known_user_is_a_path_as_written_and_one_line(argv, model_dir, tmp_path, monkeypatch,
                                                                          capsys):
    """`~user` where no such user exists stays as written, as a shell leaves it (pathlib raised a bare
    RuntimeError): here a file that is not there, said in one line."""
    monkeypatch.chdir(tmp_path)
    assert main([str(model_dir) if a == "MODEL" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "~nosuchuser-charloom" in err and "Traceback" not in err, err
    assert "home folder" not in err  # as written: not a user's home to refuse


def test_a_path_under_the_home_folder_is_written_there_not_in_a_folder_named_tilde(model_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    """plot, sample --output and export take `~/...` (quoted, or after `=`, where the shell leaves it) as the
    home folder, as every other path option does."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert main(["sample", "--checkpoint", str(model_dir), "--length", "5", "--seed", "1", "--output=~/s.txt"]) == 0
    assert main(["plot", str(model_dir), "--out=~/c.png"]) == 0
    assert sorted(p.name for p in home.iterdir()) == ["c.png", "s.txt"] and list(work.iterdir()) == []
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    assert main(["export", "--checkpoint", str(model_dir), "--out=~/m.onnx", "--web=~/page"]) == 0
    assert {"m.onnx", "page"} <= {p.name for p in home.iterdir()} and list(work.iterdir()) == []
    capsys.readouterr()


def test_flags_a_model_or_its_text_would_leave_unread_are_refused(tmp_path, capsys):
    """--ngram for a model trained without one, and --window for records (each scored whole): named, not
    dropped, before the text is read."""
    out = tmp_path / "names"
    charloom.train(source="names", out=str(out), max_steps=2, hidden_size=8, ngram=0, progress=False,
                   cache_dir=str(tmp_path / "cache"))
    for argv, message in ((["eval", "--checkpoint", str(out), "names", "--ngram"], "--ngram: "),
                          (["sample", "--checkpoint", str(out), "--ngram", "--length", "5"], "--ngram: "),
                          (["eval", "--checkpoint", str(out), "names", "--window", "64"], "--window: records are "
                                                                                          "scored each whole")):
        assert main([*argv, "--cache-dir", str(tmp_path / "cache")] if argv[0] == "eval" else argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"charloom: error: {message}") and err.count("\n") == 1, err
        assert "no n-gram (trained with --ngram 0), or leave --ngram out" in err or "--window" in argv
    assert main(["sample", "--checkpoint", str(out), "--no-ngram", "--length", "5", "--seed", "1"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--no-progress", "--sample-start", "ROMEO."], "--sample-start: shapes the samples shown at each evaluation, and "
                                                    "--no-progress shows none"),
    (["--sample-length", "0", "--sample-temperature", "0.3"], "--sample-temperature: shapes the samples shown at each "
                                                              "evaluation, and --sample-length 0 shows none"),
])
def test_sample_flags_beside_a_run_that_shows_no_samples_are_refused(tmp_path, capsys, argv, message):
    assert main(["train", "names", "--out", str(tmp_path / "run"), "--max-steps", "1", *argv]) == 2
    assert capsys.readouterr().err == f"charloom: error: {message}; leave one out\n"
    assert not (tmp_path / "run").exists()


def test_the_package_reaches_its_modules_after_a_plain_import():
    """`import charloom` loads nothing: what README's Python calls (`charloom.insight.read`,
    `charloom.evaluation.score_adapted`) name loads on first use, and a name that is no module stays an error."""
    code = ("import sys, charloom\n"
            "print('charloom.insight' in sys.modules, callable(charloom.insight.read),\n"
            "      callable(charloom.evaluation.score_adapted), charloom.Generator is charloom.sampling.Generator)\n"
            "try:\n    charloom.nosuchthing\nexcept AttributeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False True True True"
    assert out[1] == "module 'charloom' has no attribute 'nosuchthing'"
