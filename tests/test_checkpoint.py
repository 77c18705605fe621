import json
import struct

import pytest
import torch

from charloom import checkpoint
from charloom.config import ModelConfig
from charloom.errors import CharloomError
from charloom.model import CharRNN
from charloom.vocab import Vocab


@pytest.fixture
def saved(tmp_path):
    vocab = Vocab.build("hello world")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="gru", num_layers=2, hidden_size=8, embedding=4, attention=0,
                                vocab_size=len(vocab)))  # its state the cell's alone: (h,)
    path = checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=True, info={"val_bpc": 1.5})
    return path, model, vocab


def test_round_trip_is_exact_and_carries_everything(saved, tmp_path):
    path, model, vocab = saved
    ck = checkpoint.load(path)
    assert ck.vocab == vocab and ck.records is True and ck.info == {"val_bpc": 1.5}
    assert ck.config == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v)
    assert checkpoint.load(tmp_path).path == path  # a run folder means its model file


def test_hashed_context_tables_round_trip(tmp_path):
    vocab = Vocab.build("hello world")
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, grams=3, gram_buckets=40, vocab_size=len(vocab)))
    path = checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False)
    ck = checkpoint.load(path)
    assert ck.config == model.cfg and ck.model.state_names == ("h", "c", "recent", "memory")
    ids = torch.tensor([vocab.encode("hello")])
    torch.testing.assert_close(ck.model(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_file_is_plain_safetensors_with_json_header(saved):
    path, _, _ = saved
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert meta["format"] == "charloom-model" and json.loads(meta["config"])["cell"] == "gru"
    assert "pickle" not in open(checkpoint.__file__).read().replace("never unpickles", "")


def test_figures_that_are_not_finite_are_written_as_null(tmp_path, saved):
    """Python's json writes NaN and Infinity, which no strict reader (the web page's JSON.parse) takes."""
    _, model, vocab = saved
    path = checkpoint.save(tmp_path / "nan.safetensors", model, vocab, records=True,
                           info={"val_bpc": float("nan"), "curve": [float("inf"), 1.5], "n": {"x": -float("inf")}},
                           extra_meta={"y": float("nan")})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n])["__metadata__"]

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(meta["info"], parse_constant=refuse) == {"val_bpc": None, "curve": [None, 1.5],
                                                               "n": {"x": None}}
    assert json.loads(meta["extra"], parse_constant=refuse) == {"y": None}
    assert checkpoint.load(path).info["curve"] == [None, 1.5]


def test_the_header_alone_gives_what_load_gives_and_refuses_alike(saved):
    path, model, vocab = saved
    assert checkpoint.header(path) == (model.cfg, vocab.to_dict(), True, {"val_bpc": 1.5})
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) - 1])
    with pytest.raises(CharloomError, match="truncated"):
        checkpoint.header(path)


def test_truncated_file_is_refused(saved):
    path, _, _ = saved
    blob = path.read_bytes()
    for cut in (4, 100, len(blob) // 2, len(blob) - 1):
        path.write_bytes(blob[:cut])
        with pytest.raises(CharloomError, match="truncated|checksum mismatch|not a charloom model file"):
            checkpoint.load(path)


def test_bit_flip_in_weights_is_refused(saved):
    path, _, _ = saved
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x10
    path.write_bytes(bytes(blob))
    with pytest.raises(CharloomError, match="checksum mismatch"):
        checkpoint.load(path)


def test_tampered_header_and_wrong_version_are_refused(saved):
    path, _, _ = saved
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    head = json.loads(blob[8:8 + n])
    head["__metadata__"]["version"] = "99"
    new = json.dumps(head).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + blob[8 + n:])
    with pytest.raises(CharloomError, match="model file version 99 is not supported"):
        checkpoint.load(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"x" * 40)
    with pytest.raises(CharloomError, match="damaged header|not a charloom"):
        checkpoint.load(path)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(CharloomError, match="no such model file or run folder"):
        checkpoint.load(tmp_path / "nope.safetensors")
    with pytest.raises(CharloomError, match="folder holds no model.safetensors"):
        checkpoint.load(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoint_saved_on_gpu_loads_on_cpu(tmp_path):
    vocab = Vocab.build("abc")
    model = CharRNN(ModelConfig(hidden_size=8, num_layers=1, vocab_size=len(vocab))).cuda()
    path = checkpoint.save(tmp_path / "m.safetensors", model, vocab, records=False)
    ck = checkpoint.load(path, device="cpu")
    assert next(ck.model.parameters()).device.type == "cpu"
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v.cpu())


def run_state(model, world=1):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, dtype=torch.long))[0].sum().backward()
    opt.step()
    ranks = [{"rng.torch": torch.get_rng_state(), "carry.0": torch.full((2, 1, 8), float(r))}  # a GRU's (h,)
             for r in range(world)]
    configs = {"corpus": {"source": "x.txt"}, "batch": {"batch_size": 1}, "train": {"lr": 1e-3}}
    progress = checkpoint.Progress(step=7, epoch=1, index=3, elapsed=1.5, characters=99, best_val=2.25)
    trained = {k: v + 1 for k, v in model.state_dict().items()}
    return checkpoint.RunState(progress, configs, opt.state_dict(), ranks, trained, averaged=6), opt


def test_run_state_round_trips_through_the_resume_file(saved, tmp_path):
    path, model, vocab = saved
    run, opt = run_state(model, world=2)
    checkpoint.save_run(tmp_path / "last.safetensors", model, vocab, run, records=True, info={"step": 7})
    ck, back = checkpoint.load_run(tmp_path / "last.safetensors")
    assert back.progress == run.progress and back.configs == run.configs and back.averaged == 6 and back.world == 2
    assert back.optimizer["param_groups"] == json.loads(json.dumps(opt.state_dict()["param_groups"]))
    for i, st in opt.state_dict()["state"].items():
        assert all(torch.equal(back.optimizer["state"][i][k], v) for k, v in st.items())
    assert torch.equal(back.carry(1)[0], torch.ones(2, 1, 8)) and torch.equal(back.carry(0)[0], torch.zeros(2, 1, 8))
    assert len(back.carry(0)) == 1
    assert all(torch.equal(back.trained[k], v) for k, v in run.trained.items())
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back.optimizer)  # loads into a real optimizer as it was saved
    assert checkpoint.run_configs(tmp_path / "last.safetensors")["model"] == model.cfg.to_dict()


@pytest.mark.parametrize("damage, needle", [
    (lambda meta, t: meta.pop("optimizer"), "not a resume file (no optimizer)"),
    (lambda meta, t: meta["progress"].update(step="seven"), "damaged resume file (progress"),
    (lambda meta, t: meta["progress"].pop("epoch"), "damaged resume file (progress)"),
    (lambda meta, t: meta["progress"].update(world=0), "damaged resume file (processes: 0)"),
    (lambda meta, t: meta.update(optimizer={"lr": 1}), "damaged resume file (optimizer)"),
    (lambda meta, t: meta.update(batch=[1, 2]), "damaged resume file (batch options)"),
    (lambda meta, t: t.pop("rng.torch.r0"), "an RNG state is missing"),
    (lambda meta, t: t.update({"surprise": torch.zeros(1)}), "unexpected tensor 'surprise'"),
])
def test_a_damaged_resume_file_is_one_clear_line(saved, tmp_path, damage, needle):
    """A resume file whose header was edited (the checksum covers the tensors, not a hand-made header):
    every field is checked before it is used, so the user gets one line, never a KeyError or TypeError."""
    path, model, vocab = saved
    run, _ = run_state(model)
    good = tmp_path / "good.safetensors"
    checkpoint.save_run(good, model, vocab, run, records=True)
    ck = checkpoint.load(good)
    meta, tensors = json.loads(json.dumps(ck.meta)), dict(ck.tensors)
    damage(meta, tensors)
    bad = checkpoint.save(tmp_path / "last.safetensors", model, vocab, records=True, extra_tensors=tensors,
                          extra_meta=meta)
    with pytest.raises(CharloomError) as e:
        checkpoint.load_run(bad)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(bad) in str(e.value)


def test_a_model_file_is_not_a_resume_file(saved):
    path, _, _ = saved
    with pytest.raises(CharloomError, match="not a resume file .*it is a model file only"):
        checkpoint.load_run(path)
