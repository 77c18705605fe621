"""Text as the model sees it: probabilities against the model's own softmax, alternatives, hidden units,
ANSI only on a terminal, and the server's logprobs, scoring and activations."""

import json

import numpy as np
import pytest
import torch

from charloom import checkpoint
from charloom.config import ModelConfig
from charloom.insight import activations, read, shade
from charloom.model import CharRNN
from charloom.ngram import LINEAR, bucket, contexts
from charloom.sampling import Generator, Stepper
from charloom.vocab import Vocab

TEXT = "the cat sat on the mat. the dog ate the hat.\n"


def generator(cell="lstm", layers=2, records=False):
    vocab = Vocab.build(TEXT)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, num_layers=layers, hidden_size=16, embedding=6, vocab_size=len(vocab)))
    return Generator(model, vocab, records=records)


@pytest.mark.parametrize("records", [False, True])
def test_probabilities_are_the_softmax_of_the_models_logits(records):
    g = generator(records=records)
    r = read(g, "the hat", context="on ")
    ids = g.vocab.encode("the hat")
    before = [g.vocab.bos_id] if records else []
    full = before + g.vocab.encode("on ") + ids
    with torch.no_grad():
        logits, _ = g.model.eval()(torch.tensor([full]))
    probs = logits[0].double().softmax(-1)[len(full) - len(ids) - 1:-1]  # row j predicts ids[j]
    want = probs[torch.arange(len(ids)), torch.tensor(ids)].numpy()
    np.testing.assert_allclose(r.probs, want, rtol=1e-5)
    assert r.bpc == pytest.approx(float(-np.log2(want).mean()), rel=1e-5)
    top = probs.topk(5, -1)
    assert [c for c, _ in r.alternatives(2)] == [g.vocab.itos[i] for i in top.indices[2].tolist()]
    np.testing.assert_allclose([p for _, p in r.alternatives(2)], top.values[2].numpy(), rtol=1e-5)


def test_a_text_without_context_is_read_after_a_newline_as_sampling_starts():
    g = generator(layers=1)
    r = read(g, "the")
    with torch.no_grad():
        logits, _ = g.model(torch.tensor([[g.vocab.stoi["\n"], *g.vocab.encode("the")]]))
    assert r.probs[0] == pytest.approx(float(logits[0, 0].softmax(-1)[g.vocab.stoi["t"]]), rel=1e-5)
    assert len(read(g, "").probs) == 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_activations_are_the_states_of_a_hand_written_step_loop(cell):
    g = generator(cell)
    a = activations(g, "a cat", context="the ")
    model = g.model.eval()
    with torch.no_grad():
        _, state = model(torch.tensor([g.vocab.encode("the ")]))
        step, want = Stepper(model), []
        for i in g.vocab.encode("a cat"):
            _, state = step(torch.tensor([i]), state)
            want.append(state[len(model.cell.state) - 1][:, 0].numpy())  # c for an LSTM, h for a GRU: (L, H)
    name = "c" if cell == "lstm" else "h"
    assert "memory" in model.state_names and "memory" not in a.values  # the attention head's: not a unit's
    assert a.values[name].shape == (2, 5, 16)
    np.testing.assert_allclose(a.values[name], np.stack(want, 1), atol=1e-6)
    units = a.varying(name, 1, k=3)
    spread = a.values[name][1].std(0)
    assert [u for u, _ in units] == np.argsort(-spread, kind="stable")[:3].tolist()


def test_shading_colours_surprises_and_keeps_the_text():
    g = generator()
    r = read(g, "the cat\nsat")
    shaded = shade(r)
    import re

    assert re.sub(r"\033\[[0-9;]*m", "", shaded) == "the cat\nsat"
    from charloom.insight import colour

    codes = re.findall(r"(?:\033\[38;5;(\d+)m)?([^\033])(?:\033\[0m)?", shaded)
    assert [ch for _, ch in codes] == list("the cat\nsat")
    for (code, ch), p in zip(codes, r.probs.tolist()):
        want = colour(p) if ch != "\n" else None  # a newline is never coloured
        assert (int(code) if code else None) == want


def test_cli_colours_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    from charloom.cli import main

    g = generator()
    path = checkpoint.save(tmp_path / "m.safetensors", g.model, g.vocab, records=False)
    args = ["sample", "--checkpoint", str(path), "--length", "30", "--seed", "1", "--color"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert "\033[" not in plain  # captured output is not a terminal
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert main(args) == 0
    out = capsys.readouterr()
    assert "\033[38;5;" in out.out and "probability:" in out.err
    import re

    assert re.sub(r"\033\[[0-9;]*m", "", out.out) == plain  # the same text, only coloured
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(args) == 0
    assert "\033[" not in capsys.readouterr().out
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 3)
    monkeypatch.delenv("NO_COLOR")
    assert main(["eval", "--checkpoint", str(path), str(text), "--color"]) == 0
    shown = capsys.readouterr().out
    assert re.sub(r"\033\[[0-9;]*m", "", shown).startswith(TEXT) and "\033[38;5;" in shown


# ---- over HTTP ------------------------------------------------------------------------------------------
@pytest.fixture
def client(model_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from charloom.config import ServeConfig
    from charloom.server import create_app

    app = create_app(model_dir, ServeConfig(max_length=300, default_length=100, max_start=50, max_score=400, max_trace=100))
    return TestClient(app, base_url="http://localhost:8000")


def softmax_probs(model_dir, text, context, ngram=True):
    ck = checkpoint.load(model_dir)
    v = ck.vocab
    ids = v.encode(text)
    full = v.encode(context) if context else [v.stoi["\n"]]
    with torch.no_grad():
        logits, _ = ck.model.eval()(torch.tensor([full + ids]))
    probs = logits[0].double().softmax(-1)[len(full) - 1:-1]
    if ck.mixture is not None and ngram:  # the model's probabilities, written out:
        ng = ck.mixture.ngram  # p = w p_network + (1 - w) p_ngram, then q ∝ p_network^a p_ngram^b p^c
        ctx = contexts(np.array([full + ids]), None, ng.order)[0][len(full) - 1:-1]
        p_ng, *held = ng.probs(ctx)
        sure = probs.max(-1).values.numpy()
        w = torch.from_numpy(ck.mixture.weights.reshape(-1)[bucket(*held, sure)])[:, None]
        p_ng = torch.from_numpy(p_ng)
        linear = w * probs + (1 - w) * p_ng
        assert not np.allclose(ck.mixture.exponents, LINEAR)  # the model's last layer is there, and not a no-op
        a, b, c = torch.from_numpy(ck.mixture.exponents[held[0]]).T[:, :, None]
        probs = probs ** a * p_ng ** b * linear ** c
        probs = probs / probs.sum(-1, keepdim=True)
    return probs[torch.arange(len(ids)), torch.tensor(ids)].numpy(), probs


def test_generate_with_logprobs_returns_the_models_probabilities(client, model_dir):
    body = client.post("/v1/generate", json={"start": "To be", "length": 40, "n": 2, "seed": 3,
                                             "logprobs": True}).json()
    plain = client.post("/v1/generate", json={"start": "To be", "length": 40, "n": 2, "seed": 3}).json()
    assert [s["text"] for s in body["samples"]] == [s["text"] for s in plain["samples"]]
    assert "logprobs" not in plain["samples"][0]
    for sample in body["samples"]:
        chars = sample["logprobs"]
        assert "".join(c["char"] for c in chars) == sample["text"]
        want, probs = softmax_probs(model_dir, sample["text"], "To be")
        np.testing.assert_allclose([c["p"] for c in chars], want, atol=1e-5)
        assert all(len(c["top"]) == 5 for c in chars)
        assert chars[0]["top"][0][1] == pytest.approx(float(probs[0].max()), abs=1e-5)


def test_logprobs_and_scores_follow_the_ngram_option(client, model_dir):
    assert checkpoint.load(model_dir).mixture is not None  # trained with the default n-gram
    body = client.post("/v1/generate", json={"start": "To be", "length": 30, "seed": 4, "logprobs": True,
                                             "ngram": False}).json()
    sample = body["samples"][0]
    alone, _ = softmax_probs(model_dir, sample["text"], "To be", ngram=False)
    np.testing.assert_allclose([c["p"] for c in sample["logprobs"]], alone, atol=1e-5)
    mixed, _ = softmax_probs(model_dir, sample["text"], "To be")
    assert np.abs(mixed - alone).max() > 1e-3  # the two differ, so the test can tell them apart
    for ngram, want in ((False, alone), (True, mixed)):
        scored = client.post("/v1/score", json={"text": sample["text"], "context": "To be", "ngram": ngram}).json()
        np.testing.assert_allclose([c["p"] for c in scored["characters"]], want, atol=1e-5)


def test_streamed_logprobs_come_after_the_text(client):
    from tests.test_server import sse

    r = client.post("/v1/generate", json={"start": "To", "length": 30, "n": 2, "seed": 1, "stream": True,
                                          "logprobs": True})
    events = sse(r.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("logprobs") == 2
    for i in range(2):
        text = "".join(d["text"] for e, d in events if e == "message" and d["index"] == i)
        probs = next(d["logprobs"] for e, d in events if e == "logprobs" and d["index"] == i)
        assert "".join(c["char"] for c in probs) == text


def test_score_endpoint(client, model_dir):
    r = client.post("/v1/score", json={"text": "To be, or not", "context": ""})
    assert r.status_code == 200
    body = r.json()
    want, _ = softmax_probs(model_dir, "To be, or not", "")
    np.testing.assert_allclose([c["p"] for c in body["characters"]], want, atol=1e-5)
    assert body["bpc"] == pytest.approx(float(-np.log2(want).mean()), abs=1e-4)
    too_long = client.post("/v1/score", json={"text": "x" * 401})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "text"]
    assert client.post("/v1/score", json={"text": "a", "extra": 1}).status_code == 422


def test_activations_endpoint(client, model_dir):
    r = client.post("/v1/activations", json={"text": "To be, or not", "state": "c", "layer": 0, "top": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    ck = checkpoint.load(model_dir)
    g = Generator.from_checkpoint(ck)
    a = activations(g, "To be, or not")
    assert [v["unit"] for v in body["varying"]] == [u for u, _ in a.varying("c", 0, 4)]
    for unit, values in body["values"].items():
        np.testing.assert_allclose(values, a.values["c"][0][:, int(unit)], atol=1e-3)
    one = client.post("/v1/activations", json={"text": "To be", "units": [3]}).json()
    assert list(one["values"]) == ["3"] and len(one["values"]["3"]) == 5
    for bad, field in (({"state": "x"}, "state"), ({"layer": 5}, "layer"), ({"units": [999]}, "units"),
                       ({"text": "x" * 101}, "text")):
        r = client.post("/v1/activations", json={"text": "To be", **bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text


def test_eval_colours_the_text_it_scores_record_by_record(tmp_path, capsys, monkeypatch):
    import re

    from charloom.cli import main

    g = generator(records=True)
    path = checkpoint.save(tmp_path / "m.safetensors", g.model, g.vocab, records=True)
    names = tmp_path / "names.txt"
    names.write_text("the cat\nsat on\nthe mat?\n")  # '?' is outside the vocabulary
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert main(["eval", "--checkpoint", str(path), str(names), "--records", "--color"]) == 0
    out = capsys.readouterr().out
    plain = re.sub(r"\033\[[0-9;]*m", "", out).splitlines()
    assert plain[:3] == ["the cat", "sat on", "the mat\ufffd"]  # one record a line, the unknown one marked
    # each record is coloured as scoring reads it: after <bos>, on its own
    first = read(g, "the cat")
    assert out.splitlines()[0] == shade(first)
    assert main(["eval", "--checkpoint", str(path), str(names), "--records", "--color", "--json"]) == 2
    assert "--color: not with --json" in capsys.readouterr().err


def test_colour_never_changes_what_novelty_checks(tmp_path, capsys, monkeypatch):
    from charloom.cli import main

    g = generator()
    path = checkpoint.save(tmp_path / "m.safetensors", g.model, g.vocab, records=False)
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 5)
    args = ["sample", "--checkpoint", str(path), "--length", "60", "--seed", "1", "--temperature", "0",
            "--novelty-source", str(text), "--num-samples", "3"]
    assert main(args) == 0
    plain = capsys.readouterr().err
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert main([*args, "--color"]) == 0
    coloured = capsys.readouterr().err
    assert plain.splitlines()[-1] == coloured.splitlines()[-1] and "novelty:" in plain  # the same verdicts


def test_empty_texts_read_and_trace_to_nothing():
    g = generator()
    assert len(read(g, "").probs) == 0
    a = activations(g, "")
    assert a.values["c"].shape == (2, 0, 16) and a.varying("c", 0) == []


def test_what_a_reading_cannot_mean_is_refused_naming_the_argument():
    """From Python as from the server: one line naming the argument, never a bare KeyError or IndexError, and a
    lone surrogate (no character) is refused as the sampling options refuse it."""
    from charloom.errors import ConfigError

    g = generator(layers=2)
    cases = [
        (lambda: read(g, "t\ud800"), r"^text: U\+D800 at position 1 is a lone surrogate"),
        (lambda: read(g, "the", context="\udcff"), r"^context: U\+DCFF at position 0 is a lone surrogate"),
        (lambda: read(g, "the", k=-1), r"^k: the alternatives shown per character must be a whole number of at "
                                       r"least 1, got -1"),
        (lambda: read(g, "the", k=0), r"^k: .* got 0"),
        (lambda: activations(g, "the").varying("zz"), r"^name: 'zz' is not a state of this model \('h', 'c'\)"),
        (lambda: activations(g, "the").varying("h", 2), r"^layer: 2 is not a layer of this model \(0 to 1\)"),
        (lambda: g.read_logits([]), r"^ids: must be one or more ids of this model's vocabulary"),
        (lambda: g.read_logits([len(g.vocab)]), r"^ids: must be one or more ids of this model's vocabulary \(0 to "),
        (lambda: g.read_logits([1, -1]), r"^ids: must be one or more ids"),
        (lambda: activations(g, "t\ud800"), r"^text: U\+D800 at position 1 is a lone surrogate"),
        (lambda: activations(g, "the").varying("h", 0, k=-1), r"^k: the units shown must be a whole number of at "
                                                              r"least 1, got -1"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message):
            make()
    assert activations(g, "the").varying("c", -1, k=3)  # the last layer, as a list index reads it
    assert len(activations(g, "the").varying("h", np.int64(1), k=np.int64(3))) == 3  # NumPy's integers too
    assert len(read(g, "the", k=np.int64(2)).alternatives(0)) == 2
