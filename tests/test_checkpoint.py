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
    model = CharRNN(ModelConfig(cell="gru", num_layers=2, hidden_size=8, embedding=4, vocab_size=len(vocab)))
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


def test_file_is_plain_safetensors_with_json_header(saved):
    path, _, _ = saved
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert meta["format"] == "charloom-model" and json.loads(meta["config"])["cell"] == "gru"
    assert "pickle" not in open(checkpoint.__file__).read().replace("never unpickles", "")


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


def test_failed_save_keeps_the_previous_file(saved, monkeypatch):
    path, model, vocab = saved
    before = path.read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("charloom.atomic.os.replace", full_disk)
    with pytest.raises(CharloomError, match="cannot save .*No space left on device.*previous file"):
        checkpoint.save(path, model, vocab, records=False)
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoint_saved_on_gpu_loads_on_cpu(tmp_path):
    vocab = Vocab.build("abc")
    model = CharRNN(ModelConfig(hidden_size=8, num_layers=1, vocab_size=len(vocab))).cuda()
    path = checkpoint.save(tmp_path / "m.safetensors", model, vocab, records=False)
    ck = checkpoint.load(path, device="cpu")
    assert next(ck.model.parameters()).device.type == "cpu"
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v.cpu())
