"""A run's report: from a run folder, and from a model file alone with its corpus gone."""

import json
import shutil

import charloom
from charloom.cli import main
from charloom.runinfo import describe, lines


def test_info_reads_a_model_file_alone_with_its_corpus_deleted(tmp_path, text_file, tiny, capsys):
    cache = tmp_path / "cache"
    size = len(text_file.read_text())
    result = charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=12, cache_dir=str(cache),
                            **tiny)
    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "run" / "model.safetensors", alone)
    text_file.unlink()
    shutil.rmtree(cache, ignore_errors=True)
    capsys.readouterr()  # what training printed
    assert main(["info", str(alone), "--json", "--samples", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["corpus"]["source"] == str(text_file) and report["corpus"]["characters"] == size
    assert report["corpus"]["vocabulary"] == len(result.vocab.chars)
    assert report["model"] == {"cell": "lstm", "layers": 1, "hidden_size": 16, "embedding": 8, "grams": 0,
                               "head_hidden": 16, "attention": 64, "memory": 256, "shifted_keys": True,
                               "dropout": 0.0,
                               "parameters": result.model.num_parameters()}
    t = report["training"]
    assert t["steps"] == 12 and t["characters_seen"] == 12 * 4 * 16 and t["chars_per_s"] > 0
    assert t["device"] == "cpu" and t["precision"] in ("fp32", "bf16") and t["ended"] == "budget"
    assert t["evaluations"] == 0  # no metrics.jsonl beside a lone model file
    assert report["bpc"]["best_validation"] == result.progress.best_val / 0.6931471805599453
    assert len(report["samples"]) == 2 and all(len(s) == 200 for s in report["samples"])
    assert main(["info", str(alone), "--samples", "0"]) == 0
    shown = capsys.readouterr().out
    assert ("lstm 1x16, embedding 8, attention 64 wide (shifted keys) over the last 256 characters, head with a "
            "16-unit hidden layer") in shown and "12 steps" in shown and "ended: budget" in shown
    assert "samples" not in shown


def test_info_of_a_run_folder_reads_its_metrics_and_samples_records(tmp_path, tiny):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["anna", "bob", "carla", "dave", "eve", "fred", "gina", "hal"] * 10) + "\n")
    charloom.train(source=str(names), records=True, out=str(tmp_path / "run"), max_steps=10, **tiny)
    report = describe(tmp_path / "run", samples=1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert report["training"]["evaluations"] == len(rows) and report["corpus"]["records"] is True
    assert report["bpc"]["last_train"] == rows[-1]["train_bpc"]
    assert len(report["samples"]) == 2  # records are short: twice as many
    assert any(line.startswith("samples (temperature 0.8):") and " | " in line for line in lines(report))


def test_info_refuses_what_is_not_a_model(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "holds no model.safetensors" in capsys.readouterr().err


def test_the_report_of_a_run_folder_tells_the_runs_end_when_its_best_model_is_older(tmp_path, text_file, tiny):
    run = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(run), max_steps=20, **dict(tiny, eval_every=10),
                   callback=lambda e: e["event"] == "step" and e["step"] == 10)  # stopped: no whole-split score
    early = (run / "model.safetensors").read_bytes()
    charloom.train(source=str(text_file), out=str(run), max_steps=20, resume=True, **dict(tiny, eval_every=10))
    (run / "model.safetensors").write_bytes(early)  # as when the evaluations after step 10 were no better
    report = describe(run, samples=0)
    t, b = report["training"], report["bpc"]
    assert (t["steps"], t["model_step"], t["ended"]) == (20, 10, "budget")
    assert t["characters_seen"] == 20 * 4 * 16
    assert b["whole_validation_split"] is None and b["whole_validation_split_last"] is not None
    shown = "\n".join(lines(report))
    assert "20 steps" in shown and "this model file is from step 10, the best evaluated" in shown
    assert f"whole validation split {b['whole_validation_split_last']:.3f} (the last weights)" in shown
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(early)
    assert describe(alone, samples=0)["training"]["steps"] == 10  # a model file alone tells its own step
    charloom.train(source=str(text_file), out=str(run), max_steps=30, resume=True, **dict(tiny, eval_every=10))
    (run / "model.safetensors").write_bytes(early)
    assert describe(run, samples=0)["training"]["steps"] == 30  # the resume file read again once replaced
    other = tmp_path / "other"
    charloom.train(source=str(text_file), out=str(other), max_steps=40, **dict(tiny, hidden_size=8))
    (other / "model.safetensors").write_bytes(early)  # beside another run's resume file: not its run
    assert describe(other, samples=0)["training"]["steps"] == 10


def test_a_report_of_a_file_whose_figures_are_damaged_prints_them_unknown(tmp_path):
    """A model file's info is read, not trusted: figures that are not finite numbers (text, NaN, a rate that
    overflows) print as unknown, the step of a run folder's model compares as none, and the JSON is strict."""
    import math

    from charloom import checkpoint
    from charloom.config import ModelConfig
    from charloom.model import CharRNN
    from charloom.vocab import Vocab

    vocab = Vocab.build("anna\nbob\n")
    model = CharRNN(ModelConfig(hidden_size=8, vocab_size=len(vocab)))
    run = tmp_path / "run"
    cases = [{"characters_seen": math.nan, "train_seconds": 3.0}, {"characters_seen": "lots", "train_seconds": 2},
             {"characters_seen": 1, "train_seconds": "soon"}, {"characters_seen": 1e308, "train_seconds": 1e-300},
             {"step": "x", "val_bpc": math.inf, "ngram": {"val_bpc": math.nan}},
             {"characters_seen": 10**400, "train_seconds": 1, "step": 10**400}]  # past a float's range
    for info in cases:
        checkpoint.save(run / checkpoint.MODEL_FILE, model, vocab, records=False, info=info)
        checkpoint.save(run / checkpoint.RESUME_FILE, model, vocab, records=False, info={"step": 3})
        report = describe(run, samples=0)
        assert report["training"]["chars_per_s"] is None
        text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN or Infinity
        assert "NaN" not in text and "Infinity" not in text
        assert any(line.startswith("training ") and "characters/s" in line for line in lines(report))


def test_samples_a_report_cannot_hold_are_refused_naming_its_own_flag(tmp_path, monkeypatch, capsys):
    """`charloom info` writes its samples as `sample` does, under the same memory check; refused, it names its own
    flag (--samples), not sample's, and says how to report without them."""
    from charloom import checkpoint
    from charloom.config import ModelConfig
    from charloom.model import CharRNN
    from charloom.vocab import Vocab

    vocab = Vocab.build("anna\nbob\n")
    path = checkpoint.save(tmp_path / "m.safetensors", CharRNN(ModelConfig(hidden_size=8, vocab_size=len(vocab))),
                           vocab, records=False)
    monkeypatch.setattr("charloom.decoding.memory_cap", lambda: 1000)
    assert main(["info", str(path), "--samples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("charloom: error: samples (--samples): 2 samples of 200 characters") and "--samples 0" in err
    assert "--num-samples" not in err and "\n" not in err
    assert main(["info", str(path), "--samples", "0"]) == 0


def test_text_from_a_file_reaches_the_terminal_with_its_control_characters_escaped(tmp_path):
    """A file's info is printed by `charloom info`: its text (corpus, device, how it ended, the sizing's budget)
    with escape codes shown as escapes, never sent to the terminal as commands; figures print as before."""
    from charloom import checkpoint
    from charloom.config import ModelConfig
    from charloom.model import CharRNN
    from charloom.vocab import Vocab

    vocab = Vocab.build("anna\nbob\n")
    model = CharRNN(ModelConfig(hidden_size=8, vocab_size=len(vocab)))
    info = {"corpus": "\x1b[2Jplay.txt", "device": "cpu\u2028x", "stopped_by": "budget\x07",
            "sizing": {"hidden_size": 1024, "budget": "600 s\x1b[31m", "predicted_bpc": 1.5}}
    path = checkpoint.save(tmp_path / "m.safetensors", model, vocab, records=False, info=info)
    shown = "\n".join(lines(describe(path, samples=0)))
    assert "\x1b" not in shown and "\u2028" not in shown and "\x07" not in shown
    assert "\\x1b[2Jplay.txt" in shown and "cpu\\u2028x" in shown and "ended: budget\\x07" in shown
    assert "sizing       width 1024 chosen for 600 s\\x1b[31m, predicted 1.500 bpc" in shown
