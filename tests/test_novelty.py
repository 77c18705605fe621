import pytest

import charloom
from charloom.errors import CharloomError
from charloom.novelty import Novelty


def test_novelty_on_continuous_text_checks_long_lines(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n")
    nov = Novelty(charloom.load_corpus(charloom.CorpusConfig(source=str(p))), min_chars=20)
    assert not nov.check("something\nWhether 'tis nobler in the mind\nelse").new
    assert nov.check("To be, or not\nshort").new


def test_a_records_sample_is_copied_only_when_it_equals_a_whole_record(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("anna\nbob\nchristina\n")
    nov = Novelty(charloom.load_corpus(charloom.CorpusConfig(source=str(p), records=True)))
    assert nov.check("bob").new is False and nov.check("bob").copied == ["bob"]
    assert nov.check("bo").new and nov.check("bobby").new and nov.check("anna bob").new


def test_the_corpus_comes_from_the_model_file_or_a_clear_error(tmp_path):
    from charloom import checkpoint
    from charloom.config import ModelConfig
    from charloom.model import CharRNN
    from charloom.vocab import Vocab

    p = tmp_path / "names.txt"
    p.write_text("anna\nbob\n")
    vocab = Vocab.build("anna\nbob\n")
    model = CharRNN(ModelConfig(hidden_size=8, vocab_size=len(vocab)))
    bare = checkpoint.save(tmp_path / "bare.safetensors", model, vocab, records=True)
    with pytest.raises(CharloomError, match="does not say which corpus .*--novelty-source"):
        Novelty.for_checkpoint(checkpoint.load(bare))
    assert not Novelty.for_checkpoint(checkpoint.load(bare), source=str(p)).check("bob").new
    info = {"corpus_config": charloom.CorpusConfig(source=str(p), records=True).to_dict()}
    known = checkpoint.save(tmp_path / "known.safetensors", model, vocab, records=True, info=info)
    assert Novelty.for_checkpoint(checkpoint.load(known)).check("anna").copied == ["anna"]


@pytest.mark.parametrize("source", [None, "given"])
def test_a_model_file_never_chooses_where_the_corpus_is_cached(tmp_path, monkeypatch, source):
    """The corpus a file records is read as it was read, but cached where this machine caches (here
    $CHARLOOM_CACHE_DIR), never in a folder the file names: loading a file must not choose where anything is
    written. The same when the user gives the corpus (--novelty-source)."""
    from charloom import checkpoint
    from charloom.config import ModelConfig
    from charloom.model import CharRNN
    from charloom.vocab import Vocab

    p = tmp_path / "names.txt"
    p.write_text("anna\nbob\n")
    vocab = Vocab.build("anna\nbob\n")
    model = CharRNN(ModelConfig(hidden_size=8, vocab_size=len(vocab)))
    named = tmp_path / "named-by-the-file"
    info = {"corpus_config": charloom.CorpusConfig(source=str(p), records=True, cache_dir=str(named)).to_dict()}
    path = checkpoint.save(tmp_path / "m.safetensors", model, vocab, records=True, info=info)
    monkeypatch.setenv("CHARLOOM_CACHE_DIR", str(tmp_path / "mine"))
    nov = Novelty.for_checkpoint(checkpoint.load(path), source=str(p) if source else None)
    assert nov.check("bob").copied == ["bob"]
    assert not named.exists() and any((tmp_path / "mine").rglob("*"))
