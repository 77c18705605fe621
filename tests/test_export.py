"""ONNX export against PyTorch: logits and state, same-seed text, metadata, int8, and the torch-free path."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
import onnx  # noqa: E402

from charloom import checkpoint  # noqa: E402
from charloom.cli import main  # noqa: E402
from charloom.config import CorpusConfig, ExportConfig, ModelConfig  # noqa: E402
from charloom.errors import CharloomError  # noqa: E402
from charloom.evaluation import evaluate  # noqa: E402
from charloom.export import FP32_TOLERANCE, export, metadata, write_onnx  # noqa: E402
from charloom.model import CharRNN  # noqa: E402
from charloom.onnx_generator import OnnxGenerator, OnnxModel  # noqa: E402
from charloom.sampling import Generator  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

TEXT = "the cat sat on the mat. the dog ate the hat.\nA bird, a bee; a BAT!\n"


def saved_model(tmp_path, cell="lstm", layers=1, embedding=8, records=False, hidden=16, seed=0, info=None, grams=0,
                head=-1, attention=0, memory=128):
    vocab = Vocab.build(TEXT)
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(cell=cell, num_layers=layers, hidden_size=hidden, embedding=embedding, grams=grams,
                                gram_buckets=53, head_hidden=head, attention=attention, memory=memory,
                                vocab_size=len(vocab)))
    with torch.no_grad():  # larger weights than the initialisation's, so the outputs differ visibly by input
        for p in model.parameters():
            p.mul_(3.0)
    path = checkpoint.save(tmp_path / f"{cell}{layers}{embedding}.safetensors", model, vocab, records=records,
                           info=info or {"step": 3})
    return checkpoint.load(path)


def exported(tmp_path, **kw):
    ck = saved_model(tmp_path, **kw)
    out = tmp_path / "model.onnx"
    return ck, export(ck, ExportConfig(), out)


def test_an_onnx_file_named_in_capitals_is_known_by_its_name(tmp_path, capsys):
    """MODEL.ONNX (as a case-blind file system may keep it) is sampled as the ONNX file it is, not read as a model
    file with a header of eight quintillion bytes."""
    _, report = exported(tmp_path)
    upper = report.path.rename(tmp_path / "MODEL.ONNX")
    assert main(["sample", "--checkpoint", str(upper), "--start", "the", "--length", "20", "--seed", "1"]) == 0
    assert OnnxGenerator.load(upper).generate("the", 20, seed=1)[0] in capsys.readouterr().out
    with pytest.raises(CharloomError, match=r"MODEL.ONNX: an exported ONNX file runs with `charloom sample`"):
        checkpoint.load(upper)
    from charloom.export import _int8_path

    assert _int8_path(tmp_path / "MODEL.ONNX") == tmp_path / "MODEL.int8.onnx"  # not MODEL.ONNX.int8.onnx


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding", [0, 8])
@pytest.mark.parametrize("layers", [1, 2])
def test_exported_logits_and_state_match_pytorch(tmp_path, cell, embedding, layers):
    ck, report = exported(tmp_path, cell=cell, embedding=embedding, layers=layers)
    assert report.max_difference < FP32_TOLERANCE
    onnx_model, model = OnnxModel.load(report.path), ck.model.eval()
    g = torch.Generator().manual_seed(5)
    for batch, length in ((1, 1), (3, 17), (2, 64)):  # one step, a short text, a longer one: one graph for all
        ids = torch.randint(0, len(ck.vocab), (batch, length), generator=g)
        state = tuple(torch.randn(layers, batch, 16, generator=g) for _ in model.cell.state)
        with torch.no_grad():
            want_logits, want_state = model(ids, state)
        got_logits, got_state = onnx_model.forward(ids.numpy(), tuple(s.numpy() for s in state))
        assert got_logits.shape == (batch, length, len(ck.vocab))
        np.testing.assert_allclose(got_logits, want_logits.numpy(), atol=FP32_TOLERANCE, rtol=0)
        for got, want in zip(got_state, want_state):
            np.testing.assert_allclose(got, want.numpy(), atol=FP32_TOLERANCE, rtol=0)


@pytest.mark.parametrize("head, opset", [(0, 17), (24, 17), (-1, 20), (-1, 21)])
def test_every_head_exports_at_every_opset_and_matches_pytorch(tmp_path, head, opset):
    """A linear head, a hidden layer of its own width, and one as wide as the recurrent layer; the hidden layer's
    GELU is written as Div and Erf up to opset 19 and as one Gelu from opset 20: each file loads and runs."""
    ck = saved_model(tmp_path, head=head)
    report = export(ck, ExportConfig(opset=opset), tmp_path / "model.onnx")
    assert report.max_difference < FP32_TOLERANCE
    ids = torch.randint(0, len(ck.vocab), (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = ck.model.eval()(ids)
    got, _ = OnnxModel.load(report.path).forward(ids.numpy())
    np.testing.assert_allclose(got, want.numpy(), atol=FP32_TOLERANCE, rtol=0)
    assert OnnxModel.load(report.path).meta["model"]["head_hidden"] == head


@pytest.mark.parametrize("grams", [0, 3])
def test_an_attention_head_exports_and_carries_its_memory(tmp_path, grams):
    """Pieces shorter and longer than the memory, one graph for all: the memory in the state stands in for the text
    read before, as in PyTorch; the int8 file reads the same."""
    ck = saved_model(tmp_path, layers=2, grams=grams, attention=6, memory=5)
    (tmp_path / "text.txt").write_text(TEXT * 20)
    report = export(ck, ExportConfig(int8=True, text=str(tmp_path / "text.txt")), tmp_path / "model.onnx")
    assert report.max_difference < FP32_TOLERANCE and report.int8_difference < 1.0
    onnx_model, model = OnnxModel.load(report.path), ck.model.eval()
    assert onnx_model.state_names[-1] == "memory"
    ids = torch.randint(0, len(ck.vocab), (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, want = model(ids)
    state, parts = None, []
    for start, end in ((0, 1), (1, 2), (2, 9), (9, 20)):
        logits, state = onnx_model.forward(ids[:, start:end].numpy(), state)
        parts.append(logits)
    np.testing.assert_allclose(np.concatenate(parts, 1), whole.numpy(), atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(state[-1], want[-1].numpy(), atol=FP32_TOLERANCE, rtol=0)
    assert state[-1].shape == (5, 3, 13)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_hashed_context_inputs_export_and_carry_their_recent_ids(tmp_path, cell):
    ck, report = exported(tmp_path, cell=cell, layers=2, grams=4)
    assert report.max_difference < FP32_TOLERANCE
    onnx_model, model = OnnxModel.load(report.path), ck.model.eval()
    assert onnx_model.state_names == [*model.cell.state, "recent"]
    ids = torch.randint(0, len(ck.vocab), (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = model(ids)
    state, parts = None, []
    for i in (0, 1, 2, 9, 20):  # one call, then pieces of 1, 1, 7 and 11 characters: the graph carries the ids
        if i:
            logits, state = onnx_model.forward(ids[:, start:i].numpy(), state)
            parts.append(logits)
        start = i
    np.testing.assert_allclose(np.concatenate(parts, 1), whole.numpy(), atol=FP32_TOLERANCE, rtol=0)
    assert state[-1].shape == (1, 3, 3) and state[-1][0].tolist() == (ids[:, -3:] + 1).float().tolist()
    torch_gen, onnx_gen = Generator.from_checkpoint(ck), OnnxGenerator.load(report.path)
    assert onnx_gen.generate("the ", 80, n=3, seed=4, temperature=1.0) == \
        torch_gen.generate("the ", 80, n=3, seed=4, temperature=1.0)


def test_a_model_trained_with_dropout_exports_without_it(tmp_path):
    vocab = Vocab.build(TEXT)
    model = CharRNN(ModelConfig(num_layers=2, hidden_size=16, embedding=8, dropout=0.3, vocab_size=len(vocab)))
    ck = checkpoint.load(checkpoint.save(tmp_path / "d.safetensors", model.train(), vocab, records=False))
    report = export(ck, ExportConfig(), tmp_path / "d.onnx")
    assert report.max_difference < FP32_TOLERANCE


def test_an_exported_file_carries_its_figures_as_strict_json_and_no_cache_folder(tmp_path):
    """The web page reads the metadata with JSON.parse, which takes no NaN; and the folder a machine cached its
    corpus in is that machine's alone."""
    vocab = Vocab.build(TEXT)
    model = CharRNN(ModelConfig(hidden_size=8, vocab_size=len(vocab)))
    corpus = {"source": "play.txt", "cache_dir": "/home/someone/.cache/charloom", "lower": False}
    ck = checkpoint.load(checkpoint.save(tmp_path / "m.safetensors", model, vocab, records=False,
                                         info={"val_bpc": math.nan, "step": 3, "corpus_config": corpus}))
    info = json.loads(json.dumps(metadata(ck), allow_nan=False))["info"]
    assert info == {"val_bpc": None, "step": 3, "corpus_config": {"source": "play.txt", "lower": False}}


@pytest.mark.parametrize("cell, records", [("lstm", False), ("gru", True), ("rnn", False)])
def test_the_same_seed_gives_the_same_text_on_both_backends(tmp_path, cell, records):
    ck, report = exported(tmp_path, cell=cell, records=records, layers=2)
    torch_gen, onnx_gen = Generator.from_checkpoint(ck), OnnxGenerator.load(report.path)
    for opts in (dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.9),
                 dict(temperature=0.9, repetition_penalty=1.3), dict(temperature=0)):
        want = torch_gen.generate("the ", 120, n=4, seed=11, **opts)
        assert onnx_gen.generate("the ", 120, n=4, seed=11, **opts) == want
        assert len(set(want)) > 1 or opts["temperature"] == 0  # the samples really differ: the seeds are used


def test_metadata_round_trips(tmp_path):
    ck, report = exported(tmp_path, cell="gru", records=True, layers=2,
                          info={"step": 40, "val_bpc": 2.5, "corpus": "play.txt", "secret": "not exported"})
    m = OnnxModel.load(report.path)
    assert m.vocab == ck.vocab and m.records is True and m.config == ck.config
    assert m.info == {"step": 40, "val_bpc": 2.5, "corpus": "play.txt"}
    stored = json.loads(onnx.load(str(report.path)).metadata_props[0].value)
    assert stored == json.loads(json.dumps(metadata(ck)))  # what was written is what metadata() says
    assert stored["itos"][stored["ids"]["eos"]] == "<eos>" and stored["state"] == ["h"]
    assert stored["sampling"]["temperature"] == 0.8


def test_int8_file_is_smaller_and_its_bpc_change_is_measured(tmp_path, text_file):
    import charloom

    charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=60, batch_size=8, seq_len=32,
                   hidden_size=64, embedding=16, eval_every=0, sample_length=0, progress=False, warmup=2, lr=1e-2)
    ck = checkpoint.load(tmp_path / "run")
    report = export(ck, ExportConfig(int8=True), tmp_path / "run" / "model.onnx")
    assert report.int8_path == tmp_path / "run" / "model.int8.onnx" and report.int8_bytes < report.bytes / 2
    assert report.scored_characters > 0 and set(report.bpc) == {"fp32", "int8"}
    assert 0 < report.int8_difference < 1.0  # quantised: close to PyTorch, but not within fp32's tolerance
    assert abs(report.bpc["int8"] - report.bpc["fp32"]) < 0.05
    # fp32's figure is the one PyTorch's own evaluation gives on the same held-out batches
    from charloom.batching import heldout_batches
    from charloom.config import BatchConfig, CorpusConfig
    from charloom.corpus import load as load_corpus

    corpus = load_corpus(CorpusConfig.from_dict(ck.info["corpus_config"]), vocab=ck.vocab)
    want = evaluate(ck.model, heldout_batches(corpus, BatchConfig(batch_size=16, seq_len=256)))
    assert report.bpc["fp32"] == pytest.approx(want.bpc, abs=1e-4)
    assert report.scored_characters == want.characters
    assert any("int8" in line and "held-out bpc" in line for line in report.lines())


def test_int8_weights_keep_to_seven_bits_so_avx2_cpus_do_not_saturate(tmp_path):
    """An int8 file runs wherever it is copied: on a CPU without VNNI, onnxruntime multiplies uint8 activations by
    int8 weights in pairs summed into int16 (vpmaddubsw), which saturates once weights reach past 64."""
    from onnx import numpy_helper

    ck = saved_model(tmp_path, layers=2, attention=6, memory=5)
    (tmp_path / "text.txt").write_text(TEXT * 20)
    report = export(ck, ExportConfig(int8=True, text=str(tmp_path / "text.txt")), tmp_path / "model.onnx")
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(report.int8_path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    largest = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
    assert 32 < largest <= 64  # 255 x 64 x 2 fits in int16; the seven bits are used, not fewer


def test_the_onnx_path_needs_no_torch(tmp_path):
    ck, report = exported(tmp_path, layers=2)
    want = Generator.from_checkpoint(ck).generate("the", 80, n=2, seed=4, temperature=1.0)
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "from charloom.onnx_generator import OnnxGenerator\n"
            f"print(repr(OnnxGenerator.load({str(report.path)!r}).generate('the', 80, n=2, seed=4, temperature=1.0)))\n"
            "from charloom.cli import main\n"
            f"main(['sample', '--checkpoint', {str(report.path)!r}, '--start', 'the', '--length', '80', '--seed', '4',"
            " '--temperature', '1.0'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == repr(want)
    assert lines[1] == "the" + want[0].split("\n")[0]  # the CLI streams the same first sample
    assert lines[-1] == "['torch']"  # only the blocked entry: nothing imported torch


def test_cli_export_writes_into_the_run_folder_and_samples_match(tmp_path, capsys):
    ck = saved_model(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "model.safetensors", ck.model, ck.vocab, records=False)
    assert main(["export", "--checkpoint", str(run)]) == 0
    assert "onnxruntime matches PyTorch within" in capsys.readouterr().err
    assert (run / "model.onnx").is_file()
    args = ["sample", "--start", "the", "--length", "60", "--seed", "9", "--num-samples", "2"]
    assert main([*args, "--checkpoint", str(run)]) == 0
    from_torch = capsys.readouterr().out
    assert main([*args, "--checkpoint", str(run / "model.onnx")]) == 0
    assert capsys.readouterr().out == from_torch


def test_bad_onnx_files_are_one_line_errors(tmp_path, capsys):
    ck, report = exported(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not a model at all" * 10)
    graph = onnx.load(str(report.path))
    del graph.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(graph.SerializeToString())
    meta = metadata(ck)
    wrong = tmp_path / "wrong.onnx"
    write_onnx(ck.model, {**meta, "model": {**meta["model"], "vocab_size": 5}}, wrong)
    newer = tmp_path / "newer.onnx"
    write_onnx(ck.model, {**meta, "version": 99}, newer)
    hostile = hostile_graphs(tmp_path, report.path, ck)
    for path, message in ((tmp_path / "missing.onnx", "no such ONNX file"), (junk, "not an ONNX model"),
                          (bare, "not a charloom model"), (wrong, "model reads 5 ids but the vocabulary has"),
                          (newer, "version 99 is not supported"), *hostile):
        with pytest.raises(CharloomError, match=message):
            OnnxGenerator.load(path).generate("the", 5)
        assert main(["sample", "--checkpoint", str(path), "--length", "5"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"charloom: error: {path}") and "Traceback" not in err


def hostile_graphs(tmp_path, good, ck):
    """Files that hold charloom's metadata but a graph it never writes: (path, the error they get)."""
    from onnx import TensorProto, helper, numpy_helper

    def variant(name, change):
        graph = onnx.load(str(good))
        change(graph)
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(graph.SerializeToString())
        return path

    def huge(g):  # an operator that allocates what its input says
        g.graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["big"]))

    def float_ids(g):
        g.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT

    def outside(g):
        t = g.graph.initializer[0]
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="../../etc/hostname")

    def itos(g):
        meta = json.loads(g.metadata_props[0].value)
        g.metadata_props[0].value = json.dumps({**meta, "itos": meta["itos"][::-1]})

    def labelled_text(g):  # labels, which only records take, in a model of continuous text
        meta = json.loads(g.metadata_props[0].value)
        vocab = {**meta["vocab"], "labels": ["fine"]}
        g.metadata_props[0].value = json.dumps({**meta, "vocab": vocab, "records": False})

    def nan_head(g):  # the head's bias: every logit NaN at run time
        t = next(t for t in g.graph.initializer if numpy_helper.to_array(t).shape == (len(ck.vocab),))
        t.CopyFrom(numpy_helper.from_array(np.full(len(ck.vocab), np.nan, np.float32), t.name))

    return [(variant("huge", huge), "operator ConstantOfShape is not one charloom's exporter writes"),
            (variant("labelled_text", labelled_text), "labels, which only records take, and records is false"),
            (variant("float_ids", float_ids), "graph input ids is type 1"),
            (variant("outside", outside), "weights stored outside the file are not read"),
            (variant("itos", itos), "itos or ids disagree with the vocabulary"),
            (variant("nan", nan_head), "logits that are not finite numbers")]


def test_export_flags_are_checked(tmp_path, capsys):
    ck = saved_model(tmp_path)
    with pytest.raises(CharloomError, match="^runtime: only means something with --web"):
        ExportConfig(runtime="x")
    with pytest.raises(CharloomError, match="--runtime .*: no ort.wasm.min.mjs there"):
        export(ck, ExportConfig(web=str(tmp_path / "page"), runtime=str(tmp_path)), tmp_path / "m.onnx")
    assert main(["export", "--checkpoint", str(ck.path), "--opset", "9"]) == 2
    assert "opset (--opset): must be in [14, 21]" in capsys.readouterr().err
    before = ck.path.read_bytes()
    for args, message in ((["--out", str(ck.path)], "give a file name ending in .onnx"),
                          (["--out", str(tmp_path / "m.txt")], "give a file name ending in .onnx"),
                          (["--out", str(tmp_path / "x.onnx"), "--web", str(ck.path)], "not a folder"),
                          (["--out", str(tmp_path / "x.onnx"), "--int8"], "give the text to score with --text"),
                          (["--out", str(tmp_path / "x.onnx"), "--score-chars", "100000"],  # its default, unread
                           "score_chars (--score-chars): only means something with --int8")):
        assert main(["export", "--checkpoint", str(ck.path), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert ck.path.read_bytes() == before and not (tmp_path / "x.onnx").exists()  # nothing written, nothing lost


def test_a_page_without_a_runtime_loads_the_pinned_one_and_says_so(tmp_path):
    from charloom.export import ORT_WEB_URL

    ck = saved_model(tmp_path)
    export(ck, ExportConfig(web=str(tmp_path / "page")), tmp_path / "m.onnx")
    page = (tmp_path / "page" / "index.html").read_text()
    assert ORT_WEB_URL in page and "{{" not in page
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == ["charloom.js", "index.html", "model.onnx"]
    assert Path(tmp_path / "page" / "model.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


@pytest.mark.parametrize("name", ["index.html", "charloom.js", "model.onnx"])
def test_a_page_is_not_written_over_a_folder_of_someone_elses_files(tmp_path, name):
    """A --web folder holding another page's file is refused before anything is written; one holding the page an
    earlier export wrote is written again."""
    ck = saved_model(tmp_path)
    page = tmp_path / "page"
    page.mkdir()
    (page / name).write_text("my own page")
    with pytest.raises(CharloomError, match=rf"^--web {page}: holds a {name} that is not a page an export wrote"):
        export(ck, ExportConfig(web=str(page)), tmp_path / "m.onnx")
    assert [p.name for p in page.iterdir()] == [name] and (page / name).read_text() == "my own page"
    assert not (tmp_path / "m.onnx").exists()
    (page / name).unlink()
    export(ck, ExportConfig(web=str(page)), tmp_path / "m.onnx")
    export(ck, ExportConfig(web=str(page)), tmp_path / "m.onnx")  # over its own page
    export(ck, ExportConfig(web=str(page)), page / "model.onnx")  # --out the page's own model file


def readme_export_lines():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Use a model elsewhere", 1)[1].split("```", 2)[1]
    return [ln for ln in block.splitlines() if ln.strip()]


def test_the_readme_export_lines_work(tmp_path, model_dir):
    import shlex
    import shutil
    import socket
    import time
    import urllib.request

    lines = readme_export_lines()
    assert [ln.split()[0] for ln in lines] == ["charloom", "charloom", "python"]
    shutil.copytree(model_dir, tmp_path / "runs" / "quick")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for line in lines[:2]:
        args = shlex.split(line, comments=True)
        p = subprocess.run([sys.executable, "-m", "charloom", *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ROMEO.") and len(p.stdout) > 100
    for name in ("model.onnx", "model.int8.onnx"):
        assert (tmp_path / "runs" / "quick" / name).is_file()
    args = shlex.split(lines[2].replace("8080", str(port)), comments=True)
    server = subprocess.Popen([sys.executable, *args[1:]], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "charloom.js" in page
        onnx_bytes = urllib.request.urlopen(f"http://127.0.0.1:{port}/model.onnx", timeout=5).read()
        assert onnx_bytes == (tmp_path / "runs" / "quick" / "model.onnx").read_bytes()
    finally:
        server.terminate()
        server.wait(10)


def test_odd_out_paths_are_one_line_errors_naming_out_and_the_cause(tmp_path, capsys, monkeypatch):
    import types

    import charloom.export

    ck = saved_model(tmp_path)
    folder = tmp_path / "d.onnx"
    folder.mkdir()
    plain = tmp_path / "plain"
    plain.write_text("a file, not a folder")
    (tmp_path / "t.int8.onnx").mkdir()
    for args, message in (([str(folder)], "is a folder; give the name of the ONNX file to write"),
                          ([str(plain / "m.onnx")], f"{plain} is not a folder"),
                          ([str(plain / "sub" / "m.onnx")], f"{plain} is not a folder"),
                          ([str(tmp_path / "t.onnx"), "--int8"], f"int8 twin {tmp_path / 't.int8.onnx'} is a folder")):
        assert main(["export", "--checkpoint", str(ck.path), "--out", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"charloom: error: --out {args[0]}: ") and message in err, err
        assert err.count("\n") == 1 and ".onnx (sample" not in err  # not the advice for a name without .onnx
    assert not (tmp_path / "t.onnx").exists()

    def refused(**kw):  # what a folder the user may not write in gives (root writes anywhere, so it is simulated)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(charloom.export, "tempfile", types.SimpleNamespace(TemporaryFile=refused))
    assert main(["export", "--checkpoint", str(ck.path), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err == (f"charloom: error: --out {tmp_path / 'm.onnx'}: cannot write in the folder {tmp_path} "
                   f"(Permission denied)\n")
    monkeypatch.undo()
    deep = tmp_path / "new" / "deeper" / "m.onnx"  # a folder that is missing is made, as --web's is
    assert main(["export", "--checkpoint", str(ck.path), "--out", str(deep)]) == 0 and deep.is_file()


def test_a_refused_export_leaves_no_folder_behind(tmp_path, capsys):
    ck = saved_model(tmp_path)  # its file names no training corpus: --int8 needs --text
    out, page = tmp_path / "new" / "deeper" / "m.onnx", tmp_path / "page" / "web"
    # refusals said after the --out folder's check, which used to make the missing folders (and --web's) first
    for args, message in ((["--web", str(ck.path)], f"--web {ck.path}: not a folder"),
                          (["--web", str(page), "--runtime", str(tmp_path)], "no ort.wasm.min.mjs there"),
                          (["--web", str(page), "--int8"], "give the text to score with --text"),
                          (["--int8", "--text", str(tmp_path / "missing.txt")], "no such file, folder")):
        before = sorted(tmp_path.rglob("*"))
        assert main(["export", "--checkpoint", str(ck.path), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert sorted(tmp_path.rglob("*")) == before, args  # not even an empty folder
    assert not (tmp_path / "new").exists() and not (tmp_path / "page").exists()


def test_a_long_start_is_read_in_pieces_with_the_state_carried(tmp_path, monkeypatch):
    from charloom import decoding

    ck, report = exported(tmp_path, layers=2, grams=3)  # an LSTM: h, c and the recent ids carried between pieces
    gen, torch_gen = OnnxGenerator.load(report.path), Generator.from_checkpoint(ck)
    start = (TEXT * 8)[:400]
    prefix = gen._prefix(start)
    whole, _ = gen.model.forward(np.asarray([prefix]))  # the start in one call: (1, T, V)
    monkeypatch.setattr(decoding, "READ_BYTES", 7 * gen.row_bytes())  # pieces of 7 characters
    calls, forward = [], gen.model.forward
    monkeypatch.setattr(gen.model, "forward", lambda ids, state=None: calls.append(ids.shape[1]) or forward(ids, state))
    last, state = gen._start(prefix, 2)
    assert calls == [7] * (len(prefix) // 7) + [len(prefix) % 7]
    np.testing.assert_allclose(last, np.repeat(whole[:, -1], 2, 0), atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(last[:1], torch_gen._start(prefix, 1)[0], atol=FP32_TOLERANCE, rtol=0)
    # the memory check counts one piece's work: a cap below what reading the start in one call computes is no
    # refusal (it was: "start (--start): a start text of 400 characters needs ...")
    monkeypatch.setattr(decoding, "memory_cap", lambda: len(prefix) * gen.row_bytes())
    assert gen.generate(start, 60, temperature=0) == torch_gen.generate(start, 60, temperature=0)


def test_the_logits_of_a_long_text_are_read_in_pieces_with_the_state_carried(tmp_path, monkeypatch):
    from charloom import decoding

    ck, report = exported(tmp_path, layers=2, grams=3)  # an LSTM: h, c and the recent ids carried between pieces
    gen = OnnxGenerator.load(report.path)
    ids = gen._prefix((TEXT * 8)[:400])
    whole, _ = gen.model.forward(np.asarray([ids]))  # the text in one call: (1, T, V)
    with torch.no_grad():
        want, _ = ck.model.eval()(torch.tensor([ids]))  # PyTorch's: (1, T, V)
    monkeypatch.setattr(decoding, "READ_BYTES", 7 * gen.row_bytes())  # pieces of 7 characters
    calls, forward = [], gen.model.forward
    monkeypatch.setattr(gen.model, "forward", lambda x, state=None: calls.append(x.shape[1]) or forward(x, state))
    got = gen.read_logits(ids)  # what `sample --color` reads: (T, V)
    assert len(ids) % 7 and calls == [7] * (len(ids) // 7) + [len(ids) % 7]  # and a last, shorter piece
    assert got.shape == (len(ids), len(ck.vocab)) and got.dtype == np.float32
    np.testing.assert_allclose(got, whole[0], atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(got, want[0].numpy(), atol=FP32_TOLERANCE, rtol=0)


def test_a_run_folder_means_the_onnx_file_export_wrote_there(tmp_path):
    """As `charloom.load` takes a run folder for its model file, OnnxGenerator.load takes it for model.onnx."""
    ck, report = exported(tmp_path)
    assert report.path == tmp_path / "model.onnx"
    assert OnnxGenerator.load(tmp_path).generate("the", 20, seed=1) == \
        OnnxGenerator.load(report.path).generate("the", 20, seed=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharloomError, match=r"empty: no such ONNX file \(nor model.onnx in it\)$"):
        OnnxGenerator.load(tmp_path / "empty")


def test_a_model_file_that_opens_but_cannot_be_read_is_one_line(tmp_path):
    from charloom import checkpoint

    if not Path("/proc/self/mem").exists():
        pytest.skip("no /proc here")
    for load in (checkpoint.load, OnnxGenerator.load):
        with pytest.raises(CharloomError, match=r"^/proc/self/mem: cannot read \("):
            load("/proc/self/mem")
    with pytest.raises(CharloomError, match=r"^no ONNX file or run folder named \(an empty path\)"):
        OnnxGenerator.load("")


def test_int8_figures_are_of_the_split_the_run_held_out_and_of_this_exports_own_files(tmp_path, text_file,
                                                                                      monkeypatch):
    """A run with its own seed and split holds other text out than the default split does; and an export writing
    the same --out at the same time must not swap a file under this one's checks."""
    import charloom
    from charloom import export as export_mod
    from charloom.batching import heldout_batches
    from charloom.config import BatchConfig, CorpusConfig
    from charloom.corpus import load as load_corpus

    rng = np.random.default_rng(0)
    words = ["thou", "art", "the", "king", "of", "night", "and", "day", "ROMEO.", "JULIET.", "\n"]
    text = tmp_path / "long.txt"
    text.write_text(" ".join(rng.choice(words, 120_000)))  # blocks enough for a random split to choose from
    charloom.train(source=str(text), out=str(tmp_path / "run"), max_steps=20, batch_size=8, seq_len=32,
                   hidden_size=16, embedding=8, eval_every=0, sample_length=0, progress=False, warmup=2, lr=1e-2,
                   seed=7, split="random", val_fraction=0.3, ngram=0)
    ck = checkpoint.load(tmp_path / "run")
    assert ck.info["split"] == {"split": "random", "val_fraction": 0.3, "seed": 7}
    real_quantize = export_mod.quantize

    def quantize_beside_another_export(src, dst):
        (tmp_path / "run" / "model.onnx").write_bytes(b"another export's file")
        real_quantize(src, dst)
    monkeypatch.setattr(export_mod, "quantize", quantize_beside_another_export)
    report = export(ck, ExportConfig(int8=True, score_chars=10**6), tmp_path / "run" / "model.onnx")
    corpus = load_corpus(CorpusConfig.from_dict(ck.info["corpus_config"]), vocab=ck.vocab)
    split = BatchConfig(batch_size=16, seq_len=256, seed=7, split="random", val_fraction=0.3)
    want = evaluate(ck.model, heldout_batches(corpus, split))
    assert report.scored_characters == want.characters and report.bpc["fp32"] == pytest.approx(want.bpc, abs=1e-4)
    other_seed = evaluate(ck.model, heldout_batches(corpus, split.replace(seed=1337)))
    assert other_seed.bpc != pytest.approx(want.bpc, abs=1e-4)  # the seed's own blocks, not the default's
    assert OnnxModel.load(tmp_path / "run" / "model.onnx").meta["vocab"] == ck.vocab.to_dict()
    assert not any("does not say how its run split" in line for line in report.lines())
    del ck.info["split"]  # a file from before runs recorded their split: said, not hidden
    assert any("does not say how its run split" in line
               for line in export(ck, ExportConfig(int8=True), tmp_path / "old.onnx").lines())


def test_an_export_that_fails_leaves_its_folders_and_files_as_it_found_them(tmp_path, monkeypatch):
    """Nothing of a failed export stays but a file kept for inspection, named where it lies; what an export
    killed there before left is cleared."""
    from charloom import export as export_mod

    ck = saved_model(tmp_path)
    (tmp_path / "text.txt").write_text(TEXT * 40)
    dead = tmp_path / ".model.onnx.tmp-999999999-abc"  # a killed export's folder: no process has that id
    dead.mkdir()

    def failing(*_):
        raise CharloomError("no held-out text")
    monkeypatch.setattr(export_mod, "quantize", failing)
    with pytest.raises(CharloomError, match="no held-out text"):
        export(ck, ExportConfig(int8=True, text=str(tmp_path / "text.txt")), tmp_path / "new" / "sub" / "m.onnx")
    assert not (tmp_path / "new").exists() and not dead.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(export_mod, "check", lambda model, path: (_ for _ in ()).throw(
        CharloomError(f"{path}: the model failed to run")))
    out = tmp_path / "kept" / "m.onnx"
    with pytest.raises(CharloomError, match=rf"^{re.escape(str(out))}: the model failed to run; the file is kept"):
        export(ck, ExportConfig(), out)
    assert OnnxModel.load(out).meta["vocab"] == ck.vocab.to_dict()


def test_an_export_whose_model_file_was_replaced_meanwhile_puts_nothing_in_place(tmp_path, model_dir, monkeypatch):
    """A run training in the model's folder saves a new best while the export runs: the file it would put in place
    is of the model before, and would stay beside the new one."""
    import os
    import shutil

    import charloom.export as export_mod

    folder = tmp_path / "run"
    shutil.copytree(model_dir, folder)
    path = folder / checkpoint.MODEL_FILE
    ck = checkpoint.load(path)
    made = export_mod.write_onnx

    def saved_meanwhile(*args, **kwargs):
        copy = folder / "copy"
        copy.write_bytes(path.read_bytes())
        os.replace(copy, path)  # as a save replaces it: whole, under a new inode
        return made(*args, **kwargs)

    monkeypatch.setattr(export_mod, "write_onnx", saved_meanwhile)
    with pytest.raises(CharloomError, match=r"model.safetensors: replaced since it was read for this export"):
        export(ck, ExportConfig(), folder / "model.onnx")
    assert not (folder / "model.onnx").exists() and not [p for p in folder.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    ck = checkpoint.load(path)
    copy = folder / "copy"
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # saved after it was loaded, before the export began
    with pytest.raises(CharloomError, match=r"model.safetensors: replaced since it was read for this export"):
        export(ck, ExportConfig(), folder / "model.onnx")
    assert export(checkpoint.load(path), ExportConfig(), folder / "model.onnx").path.exists()


def test_int8_scores_a_text_of_another_kind_than_the_training_corpus(tmp_path, tiny):
    """--text is read with the training corpus's columns or fields only where it is a file of their kind: a
    model of a CSV's labelled column scores a plain text, and one of a plain text scores a JSONL file's text."""
    import charloom

    rows = "".join(f"the cat sat on mat {i},A\nthe dog ran to the log {i},B\n" for i in range(60))
    (tmp_path / "t.csv").write_text("text,label\n" + rows)
    (tmp_path / "plain.txt").write_text("the cat sat on the mat\nthe dog ran to the log\n" * 40)
    (tmp_path / "lines.jsonl").write_text('{"text": "the cat sat on the mat"}\n' * 80)
    opts = {k: v for k, v in tiny.items() if k != "seq_len"}
    charloom.train(source=str(tmp_path / "t.csv"), records=True, columns=("text",), label_column="label",
                   out=str(tmp_path / "csv"), max_steps=2, **opts)
    ck = checkpoint.load(tmp_path / "csv")
    report = export(ck, ExportConfig(int8=True, text=str(tmp_path / "plain.txt")), tmp_path / "a.onnx")
    assert report.scored_characters > 0 and math.isfinite(report.bpc["int8"])
    charloom.train(source=str(tmp_path / "plain.txt"), out=str(tmp_path / "txt"), max_steps=2, **tiny)
    ck = checkpoint.load(tmp_path / "txt")
    report = export(ck, ExportConfig(int8=True, text=str(tmp_path / "lines.jsonl")), tmp_path / "b.onnx")
    assert report.scored_characters > 0 and math.isfinite(report.bpc["int8"])


def test_a_text_export_cannot_read_names_what_export_reads_not_a_flag_it_lacks(tmp_path, tiny, capsys):
    """A CSV of two columns for a model of a plain text: the reader asks for --column, which export has not; the
    message says how export reads --text instead. A message naming export's own flags gains nothing."""
    import charloom
    from charloom.export import _text_hint

    (tmp_path / "plain.txt").write_text("the cat sat on the mat\nthe dog ran to the log\n" * 40)
    (tmp_path / "two.csv").write_text("a,b\n" + "the cat,the dog\n" * 80)
    charloom.train(source=str(tmp_path / "plain.txt"), out=str(tmp_path / "txt"), max_steps=2, **tiny)
    assert main(["export", "--checkpoint", str(tmp_path / "txt"), "--int8", "--text", str(tmp_path / "two.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--column" in err
    assert "export has no such flag: it reads --text as the model's training corpus was read" in err
    assert _text_hint("--text: short.txt: too short; give a longer one with --text SOURCE") == ""


def test_the_text_an_int8_export_scores_keeps_a_format_the_training_corpus_was_given(tmp_path):
    """A CSV named .txt, or a folder read a file a record, keeps its --format (export has none to give); a
    training corpus's --ext still chooses a --text folder's files; a bundled corpus is one file."""
    from charloom.export import _reading_of

    (tmp_path / "data.txt").write_text("text,label\nhello,A\n")
    trained = CorpusConfig(source="old.txt", format="csv", columns=("text",), records=True)
    assert _reading_of(trained, str(tmp_path / "data.txt")).replace(source="x") == trained.replace(source="x")
    poems = tmp_path / "poems"
    poems.mkdir()
    (poems / "a.txt").write_text("one\ntwo\n")
    each = CorpusConfig(source="old", format="text", records=True)
    assert _reading_of(each, str(poems)).format == "text"
    (poems / "b.csv").write_text("x,y\n1,2\n")
    by_ext = CorpusConfig(source="old", extensions=(".txt",))
    assert _reading_of(by_ext, str(poems)).extensions == (".txt",)
    assert _reading_of(by_ext, "names").extensions == ()
