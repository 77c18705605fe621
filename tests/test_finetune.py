"""Fine-tuning from a trained model: ids kept, the first loss equal to the parent's, unknown characters by
the parent's policy or added as new rows, the parent recorded, and resume."""

import hashlib

import pytest
import torch

import charloom
from charloom import checkpoint
from charloom.batching import prepare
from charloom.config import BatchConfig, CorpusConfig, ModelConfig
from charloom.corpus import load as load_corpus
from charloom.errors import CharloomError
from charloom.evaluation import batch_loss
from charloom.finetune import load_parent, read_corpus, same_ids

PARENT_TEXT = "the cat sat on the mat. the dog ate the hat.\n" * 30
NEW_TEXT = "the hat sat on the cat; the mat ate the dog!\n" * 30  # ';' and '!' are new


@pytest.fixture
def parent(tmp_path, tiny):
    src = tmp_path / "old.txt"
    src.write_text(PARENT_TEXT)
    charloom.train(source=str(src), out=str(tmp_path / "parent"), max_steps=20, **tiny)
    new = tmp_path / "new.txt"
    new.write_text(NEW_TEXT)
    return tmp_path / "parent", new


def test_fine_tuning_keeps_every_id_and_starts_at_the_parents_loss(tmp_path, parent, tiny, capsys):
    run, new = parent
    losses = []
    rest = {k: v for k, v in tiny.items() if k not in ("hidden_size", "num_layers", "embedding")}
    result = charloom.train(source=str(new), out=str(tmp_path / "child"), init_from=str(run), max_steps=3,
                            precision="fp32", callback=lambda e: losses.append(e["loss"]) if "loss" in e else None,
                            model=ModelConfig(), **rest)  # an object's defaults ask nothing: the parent's config wins
    old = checkpoint.load(run)
    assert result.vocab == old.vocab and result.model.cfg == old.config
    # the same first batch through the parent: its loss is the fine-tuning's first
    data = prepare(load_corpus(CorpusConfig(source=str(new)), vocab=old.vocab),
                   BatchConfig(batch_size=tiny["batch_size"], seq_len=tiny["seq_len"], fit_chars=200_000))
    first = next(iter(data.train))  # the split as the run made it: the start of its training split left out
    with torch.no_grad():
        want, _ = batch_loss(old.model.train(), first, None, torch.device("cpu"))
    assert losses[0] == pytest.approx(float(want), rel=1e-5)  # a fine-tune takes no early pieces unless asked
    assert checkpoint.load_run(tmp_path / "child" / "last.safetensors")[1].configs["train"]["early_pieces"] == 1
    lineage = checkpoint.load(tmp_path / "child").info["parent"]
    digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert lineage == {"path": str((run / "model.safetensors").resolve()), "sha256": digest, "step": 20}


def test_characters_outside_the_vocabulary_follow_the_parents_policy_and_are_reported(tmp_path, parent, tiny,
                                                                                        capsys):
    run, new = parent
    charloom.train(source=str(new), out=str(tmp_path / "child"), init_from=str(run), max_steps=2, **tiny)
    said = capsys.readouterr().out
    assert f"fine-tuning {run / 'model.safetensors'}: 60 characters of the new text are outside its vocabulary, " \
           "read as <unk>" in said
    corpus = read_corpus(load_parent(str(run)), CorpusConfig(source=str(new)), extend=False)
    old = checkpoint.load(run).vocab
    assert int((corpus.ids == old.unk_id).sum()) == 60 and corpus.stats["unknown_characters"] == 60


@pytest.mark.parametrize("option, value", [("lower", True), ("normalize", "NFKC"), ("unknown", "error"),
                                           ("min_count", 5)])
def test_a_reading_option_the_parents_vocabulary_settles_is_refused_not_dropped(tmp_path, parent, option, value):
    run, new = parent
    flag = "--" + option.replace("_", "-")
    with pytest.raises(CharloomError, match=rf"^{flag}: .*drop the flag"):
        read_corpus(load_parent(str(run)), CorpusConfig(source=str(new), **{option: value}), extend=False)
    if option == "min_count":  # extending the vocabulary builds one of the new text: its --min-count counts there
        assert read_corpus(load_parent(str(run)), CorpusConfig(source=str(new), min_count=5), extend=True).vocab
    else:  # the parent's own value is no other value
        parent_value = getattr(checkpoint.load(run).vocab, option)
        assert read_corpus(load_parent(str(run)), CorpusConfig(source=str(new), **{option: parent_value}),
                           extend=False).vocab


def test_a_parent_that_refuses_unknown_characters_refuses_the_new_text(tmp_path, tiny):
    src = tmp_path / "old.txt"
    src.write_text(PARENT_TEXT)
    charloom.train(source=str(src), out=str(tmp_path / "strict"), max_steps=3, unknown="error", **tiny)
    new = tmp_path / "new.txt"
    new.write_text(NEW_TEXT)
    with pytest.raises(CharloomError, match=r"character ';' \(U\+003B\) at position \d+ is not in the vocabulary"):
        charloom.train(source=str(new), out=str(tmp_path / "child"), init_from=str(tmp_path / "strict"),
                       max_steps=2, **tiny)


@pytest.mark.parametrize("embedding, grams", [(8, 0), (0, 0), (8, 3), (0, 3)])
def test_extend_vocab_adds_new_ids_and_leaves_old_rows_unchanged(tmp_path, tiny, embedding, grams):
    """Old ids keep their rows; with hashed contexts their hashes too (a new id only adds contexts)."""
    src = tmp_path / "old.txt"
    src.write_text(PARENT_TEXT)
    tiny = {**tiny, "grams": grams, **({"gram_buckets": 32} if grams else {})}  # sized tables only where there are
    charloom.train(source=str(src), out=str(tmp_path / "parent"), max_steps=5, **{**tiny, "embedding": embedding})
    new = tmp_path / "new.txt"
    new.write_text(NEW_TEXT)
    from charloom.trainer import configure, setup

    cfgs = configure(source=str(new), out=str(tmp_path / "child"), init_from=str(tmp_path / "parent"),
                     extend_vocab=True, max_steps=1, **{**tiny, "embedding": embedding})
    trainer = setup(cfgs["corpus"], cfgs["batch"], cfgs["model"], cfgs["train"])  # ready to run: no step taken
    old = checkpoint.load(tmp_path / "parent")
    child = trainer.vocab
    assert same_ids(old.vocab, child) and child.chars[-2:] == ("!", ";")
    assert len(child) == len(old.vocab) + 2 == trainer.model.cfg.vocab_size
    V = len(old.vocab)
    a, b = old.model.state_dict(), trainer.model.state_dict()
    for name in a:
        if (name == "rnn.weight_ih_l0" or name.startswith("grams.")) and not embedding:
            assert torch.equal(b[name][:, :V], a[name]) and b[name].shape[1] == V + 2
            assert not name.startswith("grams.") or not b[name][:, V:].any()  # old text's inputs unchanged
        elif name in ("embed.weight", "head.weight", "head.bias"):
            assert torch.equal(b[name][:V], a[name]) and b[name].shape[0] == V + 2
        else:
            assert torch.equal(b[name], a[name]), name
    result = trainer.run()
    assert checkpoint.load(tmp_path / "child").vocab == result.vocab == child  # the order of ids survives the file


def test_a_fine_tuned_run_resumes_with_its_parents_vocabulary(tmp_path, parent, tiny):
    run, new = parent
    charloom.train(source=str(new), out=str(tmp_path / "child"), init_from=str(run), extend_vocab=True,
                   max_steps=3, **tiny)
    resumed = charloom.train(source=str(new), out=str(tmp_path / "child"), max_steps=6, resume=True, **tiny)
    assert resumed.progress.step == 6 and same_ids(checkpoint.load(run).vocab, resumed.vocab)
    assert checkpoint.load(tmp_path / "child").info["parent"]["step"] == 20


def test_fine_tuning_refuses_a_different_model_or_a_missing_parent(tmp_path, parent, tiny):
    run, new = parent
    with pytest.raises(CharloomError, match=r"^--hidden 32: a fine-tuned model keeps its parent's model config"):
        charloom.train(source=str(new), out=str(tmp_path / "c"), init_from=str(run), max_steps=1,
                       **{**tiny, "hidden_size": 32})
    with pytest.raises(CharloomError, match=r"^--head-hidden 8: a fine-tuned model keeps its parent's"):
        charloom.train(source=str(new), out=str(tmp_path / "c"), init_from=str(run), max_steps=1,
                       **{**tiny, "head_hidden": 8})
    same = charloom.train(source=str(new), out=str(tmp_path / "d"), init_from=str(run), max_steps=1,
                          **{**tiny, "head_hidden": tiny["hidden_size"]})  # the parent's -1: as wide as its layer
    assert same.progress.step == 1
    with pytest.raises(CharloomError, match=r"^init_from \(--init-from\): .*no such model file or run folder"):
        charloom.train(source=str(new), out=str(tmp_path / "c"), init_from=str(tmp_path / "nothing"), max_steps=1,
                       **tiny)


def test_a_model_option_other_than_the_parents_is_refused_even_at_its_default(tmp_path, text_file, tiny, capsys):
    from charloom.cli import main

    charloom.train(source=str(text_file), out=str(tmp_path / "gru"), max_steps=2, cell="gru", **tiny)
    args = ["train", str(text_file), "--init-from", str(tmp_path / "gru"), "--out", str(tmp_path / "c"),
            "--max-steps", "1", "--no-progress"]
    assert main([*args, "--cell", "lstm"]) == 2  # lstm is the default, but not the parent's
    assert "--cell lstm: a fine-tuned model keeps its parent's model config (cell 'gru'" in capsys.readouterr().err
    with pytest.raises(CharloomError, match=r"^--cell lstm: a fine-tuned model keeps its parent's model config"):
        charloom.train(source=str(text_file), out=str(tmp_path / "p"), init_from=str(tmp_path / "gru"), max_steps=1,
                       cell="lstm", progress=False)  # the same keyword from Python
    assert not (tmp_path / "p" / "model.safetensors").exists()
    assert main([*args, "--cell", "gru", "--hidden", "16", "--batch-size", "4", "--seq-len", "16"]) == 0  # its own


def test_a_reading_option_other_than_the_parents_is_refused_even_at_its_default(tmp_path, text_file, tiny, capsys):
    from charloom.cli import main

    charloom.train(source=str(text_file), out=str(tmp_path / "low"), max_steps=2, lower=True, min_count=2, **tiny)
    args = ["train", str(text_file), "--init-from", str(tmp_path / "low"), "--out", str(tmp_path / "c"),
            "--max-steps", "1", "--no-progress", "--hidden", "16", "--batch-size", "4", "--seq-len", "16"]
    assert main([*args, "--no-lower"]) == 2  # not lower-casing is the default, but not the parent's
    assert "--lower: a fine-tuned model reads text as its parent's vocabulary does (lower True in" in \
        capsys.readouterr().err
    assert main([*args, "--min-count", "1"]) == 2
    assert "(min_count 2 in" in capsys.readouterr().err
    for option in ({"lower": False}, {"min_count": 1}):  # the same keywords from Python
        with pytest.raises(CharloomError, match=r"a fine-tuned model reads text as its parent's vocabulary does"):
            charloom.train(source=str(text_file), out=str(tmp_path / "p"), init_from=str(tmp_path / "low"),
                           max_steps=1, progress=False, **option)
    assert main([*args, "--lower", "--min-count", "2"]) == 0  # its own


def test_a_resumed_fine_tune_refuses_another_parent(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), max_steps=2, **tiny)
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), max_steps=2, **tiny)
    charloom.train(source=str(text_file), out=str(tmp_path / "child"), init_from=str(tmp_path / "a"),
                   max_steps=2, batch_size=4, seq_len=16, eval_every=0, sample_length=0, progress=False)
    with pytest.raises(CharloomError, match=r"^resume \(--resume\): the run in .*child started from .*/a, not "
                                            r".*/b \(--init-from\)"):
        charloom.train(out=str(tmp_path / "child"), init_from=str(tmp_path / "b"), resume=True, max_steps=4)
    # the same parent, however it is named (a folder or its model file), and no parent given, all go on
    charloom.train(out=str(tmp_path / "child"), init_from=str(tmp_path / "b" / ".." / "a"), resume=True,
                   max_steps=3, progress=False)
    charloom.train(out=str(tmp_path / "child"), init_from=str(tmp_path / "a" / "model.safetensors"), resume=True,
                   max_steps=4, progress=False)
    charloom.train(config=charloom.TrainConfig(out=str(tmp_path / "child"), resume=True, max_steps=5,
                                               progress=False))
    # a resume that named no parent keeps the one the run started from, for the resumes after it
    charloom.train(out=str(tmp_path / "child"), init_from=str(tmp_path / "a"), resume=True, max_steps=6,
                   progress=False)
    with pytest.raises(CharloomError, match=r"started from no parent, not "):
        charloom.train(out=str(tmp_path / "a"), init_from=str(tmp_path / "b"), resume=True, max_steps=4)
