import os
import subprocess
import sys

import pytest

from charloom import atomic, checkpoint
from charloom.config import ModelConfig
from charloom.errors import CharloomError
from charloom.model import CharRNN
from charloom.vocab import Vocab


@pytest.fixture
def saved(tmp_path):
    vocab = Vocab.build("hello world")
    model = CharRNN(ModelConfig(cell="gru", num_layers=1, hidden_size=8, embedding=4, vocab_size=len(vocab)))
    return checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False), model, vocab


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "er" / "f.bin"  # the folders are made
    atomic.write_bytes(path, b"old")
    atomic.write_text(path, "new \u00e9")
    assert path.read_bytes() == "new \u00e9".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_a_folder_that_cannot_be_made_is_a_failed_save(tmp_path):
    (tmp_path / "plain").write_text("")  # a file where the folder would go, as a read-only folder refuses one
    with pytest.raises(CharloomError, match=r"plain/sub/f.bin: cannot save \("):
        atomic.write_bytes(tmp_path / "plain" / "sub" / "f.bin", b"data")


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



def test_a_write_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic.write_bytes(path, b"previous")
    real_fsync = os.fsync

    def dying_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("charloom.atomic.os.fsync", dying_fsync)
    with pytest.raises(CharloomError, match=f"{path}: cannot save \\(Input/output error\\)"):
        atomic.write_bytes(path, b"half")
    monkeypatch.setattr("charloom.atomic.os.fsync", real_fsync)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_leftovers_of_gone_writers_are_removed_and_nothing_else(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    names = [f".model.safetensors.tmp-{gone.pid}", f".metrics.jsonl.tmp-{os.getppid()}", "model.safetensors",
             ".hidden", f"notes.tmp-{gone.pid}"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert atomic.remove_leftovers(tmp_path) == [tmp_path / names[0]]  # a live writer's and other files stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    assert atomic.remove_leftovers(tmp_path / "no such folder") == []


def test_a_temporary_folder_of_a_gone_writer_is_removed_with_its_files(tmp_path, monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    mine = atomic.temporary_folder(tmp_path / "abc")
    monkeypatch.setattr("charloom.atomic.os.getpid", lambda: gone.pid)
    theirs = atomic.temporary_folder(tmp_path / "abc")
    (theirs / "ids.npy").write_bytes(b"half")
    assert atomic.remove_leftovers(tmp_path) == [theirs]
    assert list(tmp_path.iterdir()) == [mine]
