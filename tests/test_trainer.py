import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import charloom
from charloom import checkpoint, decoding, evaluation
from charloom.config import TrainConfig, parse_duration
from charloom.errors import CharloomError, ConfigError
from charloom.sampling import Generator
from charloom import hooks
from charloom import trainer as train_mod
from charloom.trainer import learning_rate


pytestmark = pytest.mark.kernel


def losses_of(events):
    return [e["loss"] for e in events if e["event"] == "step"]


def test_a_callback_stops_the_run_from_an_evaluation_after_the_next_step(tmp_path, text_file, tiny):
    events = []
    r = charloom.train(source=str(text_file), out=str(tmp_path), callback=lambda e: events.append(e) or
                       e["event"] == "eval", **dict(tiny, max_steps=20, eval_every=5))
    assert r.stopped_by == "callback" and r.progress.step == 6  # the processes agree on a stop after a step
    assert [e["step"] for e in events if e["event"] == "eval"][0] == 5


def test_a_callback_that_cannot_be_called_is_refused_before_an_old_run_is_cleared(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path), **dict(tiny, max_steps=2, eval_every=2))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CharloomError, match=r"^callback: int is not callable"):
        charloom.train(source=str(text_file), out=str(tmp_path), overwrite=True, callback=5, **tiny)
    with pytest.raises(CharloomError, match=r"^callback: '<lambda>' cannot be called with one event"):
        charloom.train(source=str(text_file), out=str(tmp_path), overwrite=True, callback=lambda: None, **tiny)
    import functools

    @functools.wraps(lambda: None)
    def wrapper(event):  # takes one event, whatever it wraps
        return None
    train_mod._check_callback(wrapper)
    train_mod._check_callback(functools.partial(lambda tag, event: None, "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before and charloom.load(tmp_path).info["step"] == 2


@pytest.mark.parametrize("kind", ["contiguous", "records"])
def test_stopped_and_resumed_run_follows_the_same_losses(tmp_path, text_file, tiny, kind):
    extra = dict(order="contiguous", dropout=0.2, num_layers=2) if kind == "contiguous" else dict(records=True)
    opts = dict(tiny, **extra, max_steps=14, eval_every=4)
    straight = []
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), callback=straight.append, **opts)

    first = []

    def stop_at_6(event):
        first.append(event)
        return event["event"] == "step" and event["step"] == 6

    r1 = charloom.train(source=str(text_file), out=str(tmp_path / "b"), callback=stop_at_6, **opts)
    assert r1.stopped_by == "callback" and r1.progress.step == 6
    second = []
    r2 = charloom.train(source=str(text_file), out=str(tmp_path / "b"), callback=second.append, resume=True, **opts)
    assert r2.progress.step == 14
    assert losses_of(first) + losses_of(second) == losses_of(straight)  # identical on CPU, not just close
    a = checkpoint.load(tmp_path / "a" / "last.safetensors").model.state_dict()
    b = checkpoint.load(tmp_path / "b" / "last.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the weight average
    ta = checkpoint.load(tmp_path / "a" / "last.safetensors").tensors
    tb = checkpoint.load(tmp_path / "b" / "last.safetensors").tensors
    trained = [k for k in ta if k.startswith("weights.")]
    assert trained and all(torch.equal(ta[k], tb[k]) for k in trained)  # the trained weights
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


@pytest.mark.parametrize("ema", [0.5, 0.0])  # 0.5: the warm-up rule, then the decay
def test_the_saved_model_is_the_moving_average_of_the_trained_weights(tmp_path, text_file, tiny, ema):
    from charloom.config import BatchConfig, CorpusConfig, ModelConfig

    trainer = train_mod.setup(
        CorpusConfig(source=str(text_file)), BatchConfig(batch_size=4, seq_len=16),
        ModelConfig(hidden_size=16, embedding=8),
        TrainConfig(out=str(tmp_path), max_steps=40, eval_every=0, sample_length=0, progress=False, lr=1e-2, ema=ema))
    trained, averaged = [], []  # the weights and their average after each step

    def record(event):
        if event["event"] == "step":
            trained.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
            averaged.append({k: v.clone() for k, v in trainer.final_model.state_dict().items()})

    trainer.hooks.append(hooks.Callback(record))
    result = trainer.run()
    # the reference: the first step's weights, then average <- d * average + (1 - d) * weights
    average = dict(trained[0])
    for n, weights in enumerate(trained[1:], start=1):
        d = min(ema, (1 + n) / (10 + n))
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
        for k in average:
            torch.testing.assert_close(averaged[n][k], average[k], rtol=0, atol=1e-6)
    saved = checkpoint.load(tmp_path / "last.safetensors")
    for k, v in saved.model.state_dict().items():
        torch.testing.assert_close(v, average[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(result.model.state_dict()[k], v, rtol=0, atol=0)
        if ema:
            assert torch.equal(saved.tensors[f"weights.{k}"], trained[-1][k])
            assert not torch.allclose(v, trained[-1][k], atol=1e-4)  # the average is not the last weights
        else:
            assert torch.equal(v, trained[-1][k]) and f"weights.{k}" not in saved.tensors
    assert charloom.load(tmp_path).info["weight_average_decay"] == ema


@pytest.mark.parametrize("order, grams", [("shuffle", 0), ("contiguous", 0), ("contiguous", 3)])
def test_early_batches_take_one_step_per_piece_with_the_state_carried_between_them(tmp_path, text_file, order, grams):
    """The trainer against a hand-written loop: each batch cut into 3 pieces along time (3, 4 and 3 characters),
    an AdamW step on each, the hidden state of one piece (detached) the start of the next; in contiguous order
    the last piece's state also starts the next batch. The loss shown for a step is its characters' mean."""
    from charloom.config import BatchConfig, CorpusConfig, ModelConfig
    from charloom.evaluation import batch_loss
    from charloom.model import CharRNN

    trainer = train_mod.setup(
        CorpusConfig(source=str(text_file)), BatchConfig(batch_size=4, seq_len=10, order=order),
        ModelConfig(hidden_size=16, embedding=8, cell="lstm", grams=grams, **({"gram_buckets": 64} if grams else {})),
        TrainConfig(out=str(tmp_path), max_steps=5, eval_every=0, sample_length=0, progress=False, lr=1e-2, ema=0,
                    warmup=0, schedule="constant", early_pieces=3, early_share=1.0, precision="fp32"))
    reference = CharRNN(trainer.model.cfg)
    reference.load_state_dict(trainer.model.state_dict())
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    batches, shown, want = trainer.data.train.iterate(0, 0), [], []
    trainer.hooks.append(hooks.Callback(lambda e: shown.append(e["loss"]) if e["event"] == "step" else None))
    trainer.run()
    state = None
    for _ in range(5):
        batch, total = next(batches), 0.0
        state = state if batch.continues else None
        for piece in batch.pieces(3):
            loss, state = batch_loss(reference, piece, state, torch.device("cpu"))
            total += loss.item() * piece.x.numel()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            opt.step()
            state = tuple(s.detach() for s in state)
        want.append(total / batch.x.numel())
    assert [p.x.shape[1] for p in batch.pieces(3)] == [3, 4, 3]
    assert (order == "contiguous") == batch.continues  # the carry across batches is exercised
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[k], v, rtol=0, atol=1e-6)
    assert shown == pytest.approx(want, rel=1e-6)


def test_a_run_stopped_and_resumed_within_the_early_share_follows_the_same_losses(tmp_path, text_file, tiny):
    opts = dict(tiny, max_steps=10, eval_every=3, early_pieces=3, early_share=0.5, order="contiguous")
    straight = []
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), callback=straight.append, **opts)
    first = []
    charloom.train(source=str(text_file), out=str(tmp_path / "b"),
                   callback=lambda e: first.append(e) or (e["event"] == "step" and e["step"] == 2), **opts)
    second = []
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), callback=second.append, resume=True, **opts)
    assert losses_of(first) + losses_of(second) == losses_of(straight) and len(losses_of(straight)) == 10
    _, run = checkpoint.load_run(tmp_path / "b" / "last.safetensors")
    assert all(int(st["step"]) == 3 * 5 + 5 for st in run.optimizer["state"].values())  # 5 steps in 3 pieces


def resumed_from_an_older_file(tmp_path, text_file, opts, stop_at, strip, **resume_with):
    """A straight run and one stopped at `stop_at` whose resume file then loses what `strip(extra)` deletes (as
    a file written before those options existed), resumed to the end (with `resume_with` given too): whether the
    straight run's and the resumed run's weights are equal."""
    from test_model_files import contents, forge

    charloom.train(source=str(text_file), out=str(tmp_path / "a"), **opts)
    charloom.train(source=str(text_file), out=str(tmp_path / "b"),
                   callback=lambda e: e["event"] == "step" and e["step"] == stop_at, **opts)
    path = tmp_path / "b" / "last.safetensors"
    tensors, meta = contents(path)
    extra = json.loads(meta["extra"])
    strip(extra)
    forge(path, tensors, {**meta, "extra": json.dumps(extra)})
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), resume=True, max_steps=opts["max_steps"],
                   **resume_with)
    a = checkpoint.load(tmp_path / "a" / "last.safetensors").tensors
    b = checkpoint.load(path).tensors
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith("weights."))


def test_a_resume_file_from_before_the_early_pieces_continues_without_them(tmp_path, text_file, tiny):
    def strip(extra):
        del extra["train"]["early_pieces"], extra["train"]["early_share"]

    assert resumed_from_an_older_file(tmp_path, text_file, dict(tiny, max_steps=8, eval_every=0, early_pieces=1),
                                      1, strip)


def test_late_pieces_learn_as_the_same_pieces_early_do(tmp_path, text_file, tiny):
    """Three pieces a batch over the whole budget, as late pieces after no early share or as early pieces over all
    of it: the same updates, so the same weights."""
    opts = dict(tiny, max_steps=6, eval_every=0, order="contiguous")
    charloom.train(source=str(text_file), out=str(tmp_path / "late"), early_share=0.0, late_pieces=3, **opts)
    charloom.train(source=str(text_file), out=str(tmp_path / "early"), early_share=1.0, early_pieces=3, **opts)
    late, early = (checkpoint.load_run(tmp_path / k / "last.safetensors") for k in ("late", "early"))
    assert all(int(st["step"]) == 18 for st in late[1].optimizer["state"].values())
    assert all(torch.equal(late[0].tensors[k], early[0].tensors[k]) for k in late[0].tensors)


@pytest.mark.parametrize("seq_len, early, late", [(16, 1, 1), (128, 4, 1), (256, 8, 2), (300, 10, 3)])
def test_a_fresh_run_takes_pieces_of_its_windows_and_records_them(tmp_path, text_file, tiny, seq_len, early, late):
    """Early pieces of 32 characters (or fewer, longer ones), late ones of 128, unless given."""
    opts = dict(tiny, max_steps=4, eval_every=0, batch_size=2, seq_len=seq_len, val_fraction=0.1)
    charloom.train(source=str(text_file), out=str(tmp_path), **opts)
    _, run = checkpoint.load_run(tmp_path / "last.safetensors")
    assert (run.configs["train"]["early_pieces"], run.configs["train"]["late_pieces"]) == (early, late)
    assert all(int(st["step"]) == 2 * early + 2 * late  # within 30% of 4 steps: the first two
               for st in run.optimizer["state"].values())


def test_a_resume_file_from_before_the_late_pieces_continues_without_them(tmp_path, text_file, tiny):
    """Such a run learned its windows whole after the early share: resumed, it still does, though a fresh run
    of its windows would now cut them (256 characters: 2 pieces)."""
    def strip(extra):
        del extra["train"]["late_pieces"]

    opts = dict(tiny, max_steps=8, eval_every=0, batch_size=2, seq_len=256, val_fraction=0.1, late_pieces=1)
    assert resumed_from_an_older_file(tmp_path, text_file, opts, 1, strip)


@pytest.mark.parametrize("records, late, updates", [(False, 1, 3 + 3 + 1 + 1), (False, 2, 3 + 3 + 2 + 2),
                                                   (True, 0, 4)])
def test_pieces_early_and_late_in_the_budget_and_not_for_records(tmp_path, text_file, tiny, records, late, updates):
    """Records take one update a batch: the pieces their windows of 256 would settle to (8 early, 2 late) are
    not theirs, and asking for pieces on records is refused (test_cli)."""
    pieces = {} if records else dict(early_pieces=3, early_share=0.5, late_pieces=late)
    opts = {k: v for k, v in tiny.items() if not records or k != "seq_len"}
    result = charloom.train(source=str(text_file), out=str(tmp_path), records=records,
                            **dict(opts, max_steps=4, eval_every=0, **pieces))
    _, run = checkpoint.load_run(tmp_path / "last.safetensors")
    assert result.progress.step == 4
    assert all(int(st["step"]) == updates for st in run.optimizer["state"].values())  # AdamW's own count
    if records:
        assert (run.configs["train"]["early_pieces"], run.configs["train"]["late_pieces"]) == (8, 2)


@pytest.mark.parametrize("before, after", [(0.5, 0.0), (0.0, 0.5)])
def test_resume_keeps_the_trained_weights_when_the_average_is_switched(tmp_path, text_file, tiny, before, after):
    opts = dict(tiny, max_steps=12)
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), ema=0.0, **opts)
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), ema=before,
                   callback=lambda e: e["event"] == "step" and e["step"] == 5, **opts)
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), ema=after, resume=True, **opts)
    straight = checkpoint.load(tmp_path / "a" / "last.safetensors").model.state_dict()
    resumed = checkpoint.load(tmp_path / "b" / "last.safetensors")
    weights = ({k: resumed.tensors[f"weights.{k}"] for k in straight} if after else resumed.model.state_dict())
    assert all(torch.equal(straight[k], weights[k]) for k in straight)  # the average never feeds back


def test_resume_refuses_a_different_model(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    with pytest.raises(CharloomError, match="option hidden_size is 32 but the run .* used 16"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=6, resume=True, **{**tiny, "hidden_size": 32})
    with pytest.raises(CharloomError, match="nothing to resume"):
        charloom.train(source=str(text_file), out=str(tmp_path / "new"), max_steps=6, resume=True, **tiny)


def test_resume_takes_the_heads_width_given_as_the_layer_it_has(tmp_path, text_file, tiny):
    """A head as wide as the recurrent layer is that layer whether -1 or its width names it; another is refused."""
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)  # head_hidden -1 at 16 wide
    with pytest.raises(CharloomError, match="option head_hidden is 8 but the run .* used -1"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=6, resume=True, **{**tiny, "head_hidden": 8})
    resumed = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=5, resume=True,
                             **{**tiny, "head_hidden": 16})
    assert resumed.progress.step == 5


@pytest.mark.parametrize("option, off, dropped", [("head_hidden", 0, ("head_hidden",)),
                                                  ("attention", 0, ("attention", "memory")),
                                                  ("shifted_keys", False, ("shifted_keys",))])
def test_a_resume_file_from_before_an_option_resumes_without_what_it_adds(tmp_path, text_file, tiny, option, off,
                                                                          dropped):
    """A resume file from before the head's hidden layer (the attention head, its shifted keys) holds no such
    option: it resumes a linear head (no attention head, keys from each position), the run it was, not the
    default's larger network."""
    from test_model_files import contents, forge

    opts = dict(tiny, max_steps=6, eval_every=0, **{option: off})
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), **opts)
    charloom.train(source=str(text_file), out=str(tmp_path / "b"),
                   callback=lambda e: e["event"] == "step" and e["step"] == 3, **opts)
    path = tmp_path / "b" / "last.safetensors"
    tensors, meta = contents(path)
    meta["config"] = json.dumps({k: v for k, v in json.loads(meta["config"]).items() if k not in dropped})
    forge(path, tensors, meta)
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), resume=True, max_steps=6)
    a, b = (checkpoint.load(tmp_path / k / "last.safetensors") for k in "ab")
    assert getattr(b.config, option) == off and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_a_fresh_run_never_replaces_an_old_one_unasked(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    with pytest.raises(CharloomError, match=r"^out \(--out\): .* already holds a run; "
                                            r"continue it \(resume, --resume\)"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    r = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, overwrite=True, **tiny)
    assert r.progress.step == 2 and charloom.load(tmp_path / "last.safetensors").info["step"] == 2
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2]


def test_a_second_run_on_a_folder_another_run_is_writing_is_refused(tmp_path, text_file, tiny):
    """Two runs writing one folder would take turns replacing each other's files (with --overwrite, deleting
    them): the second is refused while the first holds it, in whatever mode, and the folder is free again once
    the first has ended."""
    cfgs = train_mod.configure(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    first = train_mod.setup(cfgs["corpus"], cfgs["batch"], cfgs["model"], cfgs["train"])
    for mode in ({}, {"overwrite": True}):
        with pytest.raises(CharloomError, match=rf"^out \(--out\): {tmp_path} is being written by another run "
                                                rf"\(process {os.getpid()}\); wait for it to end"):
            charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, **tiny, **mode)
    assert first.run().progress.step == 3
    r = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=5, resume=True)
    assert r.progress.step == 5


def test_a_start_that_fails_frees_its_folder_at_once(tmp_path, text_file, tiny):
    """A run refused after it took its folder lets the folder go, though the caller still holds the error (and
    with it the failed start's frames)."""
    with pytest.raises(CharloomError, match=r"^--no-carry-state: only with --order contiguous") as held:
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, carry_state=False, **tiny)
    r = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, **tiny)
    assert held.value is not None and r.progress.step == 2


def test_a_resume_that_read_a_save_another_run_replaced_before_it_held_the_folder_is_refused(
        tmp_path, text_file, tiny, monkeypatch):
    """A resume reads the run's last save before it can hold the folder: a run still writing it that saves and ends
    in between would be continued from the older save, its later steps overwritten."""
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    resume_file = tmp_path / checkpoint.RESUME_FILE
    start = train_mod._runtime

    def saved_meanwhile(*args, **kwargs):
        monkeypatch.setattr(train_mod, "_runtime", start)
        copy = tmp_path / "copy"
        copy.write_bytes(resume_file.read_bytes())
        os.replace(copy, resume_file)  # as a save replaces it: whole, under a new inode
        return start(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_runtime", saved_meanwhile)
    with pytest.raises(CharloomError, match=r"^resume \(--resume\): the run in .* saved again while this start "
                                            r"read it"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=5, resume=True)
    assert charloom.train(source=str(text_file), out=str(tmp_path), max_steps=5, resume=True).progress.step == 5


def test_a_training_option_the_corpus_never_reads_is_refused_on_resume_too(tmp_path, text_file, tiny):
    """A resumed run takes the training options given now: one its batches never read is refused as at the start
    (its batch options must be the ones it saved, which resume checks against the file)."""
    records = {k: v for k, v in tiny.items() if k != "seq_len"}
    charloom.train(source=str(text_file), out=str(tmp_path / "r"), records=True, max_steps=2, **records)
    with pytest.raises(CharloomError, match=r"^--early-pieces: only for continuous text"):
        charloom.train(source=str(text_file), out=str(tmp_path / "r"), records=True, max_steps=3, resume=True,
                       early_pieces=4)
    # a TrainConfig given whole leaves the pieces at 0, to be chosen: not given anew
    from charloom.config import CorpusConfig
    r = charloom.train(CorpusConfig(source=str(text_file), records=True),
                       config=TrainConfig(out=str(tmp_path / "r"), resume=True, max_steps=3, progress=False))
    assert r.progress.step == 3
    charloom.train(source=str(text_file), out=str(tmp_path / "t"), max_steps=2, **tiny)
    with pytest.raises(CharloomError, match=r"^--no-carry-state: only with --order contiguous"):
        charloom.train(source=str(text_file), out=str(tmp_path / "t"), max_steps=3, resume=True, carry_state=False)
    assert charloom.train(source=str(text_file), out=str(tmp_path / "t"), max_steps=3, resume=True).progress.step == 3
    with pytest.raises(CharloomError, match=r"^--overwrite: starts afresh, and --resume continues the run in "):
        charloom.train(source=str(text_file), out=str(tmp_path / "t"), max_steps=4, resume=True, overwrite=True)
    assert charloom.load(tmp_path / "t" / "last.safetensors").info["step"] == 3
    # a run begun with overwrite records it: its resume neither inherits it nor lets it be given again
    charloom.train(source=str(text_file), out=str(tmp_path / "t"), max_steps=2, overwrite=True, **tiny)
    with pytest.raises(CharloomError, match=r"^--overwrite: starts afresh"):
        charloom.train(out=str(tmp_path / "t"), max_steps=3, resume=True, overwrite=True)
    assert charloom.train(out=str(tmp_path / "t"), max_steps=3, resume=True).progress.step == 3


def test_an_option_the_corpus_never_reads_is_refused_before_the_text_is_encoded(tmp_path, text_file, tiny,
                                                                                 monkeypatch):
    """The kind of text is known from its name and options: a large corpus's first encoding takes minutes."""
    def encoded(*args, **kwargs):
        raise AssertionError("the corpus was read before the option was refused")

    monkeypatch.setattr(train_mod, "load_corpus", encoded)
    with pytest.raises(CharloomError, match=r"^--max-record-len: only for records"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, max_record_len=64, **tiny)
    with pytest.raises(CharloomError, match=r"^--early-pieces: only for continuous text"):
        charloom.train(source="names", out=str(tmp_path), max_steps=2, early_pieces=4,
                       **{k: v for k, v in tiny.items() if k != "seq_len"})
    with pytest.raises(CharloomError, match=r"^--early-pieces: only for continuous text"):  # named at its default
        charloom.train(source="names", out=str(tmp_path), max_steps=2, early_pieces=0,
                       **{k: v for k, v in tiny.items() if k != "seq_len"})


def test_a_trainer_set_up_and_never_run_lets_its_folder_go_by_close_or_with(tmp_path, text_file, tiny, monkeypatch):
    cfgs = train_mod.configure(source=str(text_file), out=str(tmp_path), max_steps=2, **tiny).values()
    with train_mod.setup(*cfgs):
        pass
    t = train_mod.setup(*cfgs)
    t.close()

    def unwritable(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(train_mod.atomic, "remove_leftovers", unwritable)  # after the folder is held
    with pytest.raises(CharloomError, match=r"^out \(--out\): cannot write the run folder") as held:
        train_mod.setup(*cfgs)
    monkeypatch.undo()
    assert held.value is not None and charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2,
                                                     overwrite=True, **tiny).progress.step == 2


def test_reloaded_checkpoint_gives_identical_logits_without_the_corpus(tmp_path, text_file, tiny):
    result = charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=6, **tiny)
    ids = result.vocab.encode_tensor("First Citizen")[None]
    with torch.no_grad():
        before = result.model.eval()(ids)[0]
    text_file.unlink()
    ck = charloom.load(tmp_path / "run")
    with torch.no_grad():
        after = ck.model.eval()(ids)[0]
    assert torch.equal(before, after)
    assert ck.vocab == result.vocab and ck.info["step"] == 6
    assert len(Generator(ck.model, ck.vocab).generate("All", 20, seed=1)[0]) == 20


def test_best_model_is_kept_by_validation_loss(tmp_path, text_file, tiny):
    result = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=20, **tiny)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["val_loss"])
    ck = charloom.load(tmp_path / "model.safetensors")
    assert ck.info["step"] == best["step"]
    assert ck.info["val_loss"] == pytest.approx(best["val_loss"])
    assert charloom.load(tmp_path / "last.safetensors").info["step"] == 20 == result.progress.step


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.bf16)])
def test_evaluations_score_the_same_characters_and_the_last_also_the_whole_split(tmp_path, text_file, tiny,
                                                                                 precision):
    result = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=10,
                            **dict(tiny, eval_chars=32, precision=precision))
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    data = charloom.prepare(charloom.load_corpus(charloom.CorpusConfig(source=str(text_file))),
                            charloom.BatchConfig(batch_size=tiny["batch_size"], seq_len=tiny["seq_len"]))
    model = charloom.load(tmp_path / "last.safetensors").model
    # training evaluates in its own precision
    subset = charloom.evaluate(model, data.val_batches(), max_characters=32, precision=precision)
    whole = charloom.evaluate(model, data.val_batches(), precision=precision)
    exact = charloom.evaluate(model, data.val_batches())
    assert whole.loss == pytest.approx(exact.loss, abs=0 if precision == "fp32" else 0.01)
    assert whole.characters > subset.characters >= 32
    assert rows[-1]["val_loss"] == pytest.approx(subset.loss)  # comparable with the rows before it
    assert rows[-1]["full_val_loss"] == pytest.approx(whole.loss)
    assert rows[-1]["full_val_characters"] == whole.characters
    assert "full_val_loss" not in rows[0]
    assert result.val.loss == pytest.approx(whole.loss)
    best = min(rows, key=lambda r: r["val_loss"])
    assert charloom.load(tmp_path / "model.safetensors").info["step"] == best["step"]


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.bf16)])
def test_a_small_model_overfits_one_short_text(tmp_path, tiny, precision):
    tweet = "@amy Thanks for the follow, have a great day!"
    p = tmp_path / "one.txt"
    p.write_text(tweet + "\n")
    opts = dict(tiny, batch_size=1, hidden_size=64, embedding=0, val_fraction=0.0, eval_every=0, lr=1e-2,
                warmup=0, schedule="constant", precision=precision)
    events = []
    charloom.train(source=str(p), records=True, out=str(tmp_path / "run"), max_steps=150, callback=events.append,
                   **opts)
    assert losses_of(events)[-1] < 0.05  # nats per character, near zero
    ck = charloom.load(tmp_path / "run")
    assert Generator(ck.model, ck.vocab, records=True).generate("", 100, temperature=0)[0] == tweet


def test_non_finite_loss_stops_before_saving(tmp_path, text_file, tiny, monkeypatch):
    real = train_mod.batch_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, state = real(*args, **kwargs)
        calls["n"] += torch.is_grad_enabled()  # training steps only, not evaluation
        return (loss * float("nan") if calls["n"] == 8 else loss), state

    monkeypatch.setattr(train_mod, "batch_loss", poisoned)
    with pytest.raises(CharloomError, match=r"step 8: the loss is nan; training stopped and this step was not saved"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=20, early_pieces=1, **tiny)
    ck = charloom.load(tmp_path / "last.safetensors")
    assert ck.info["step"] == 5  # the last evaluation before the bad step
    assert all(torch.isfinite(p).all() for p in ck.model.parameters())


def test_budgets_by_steps_and_epochs(tmp_path, text_file, tiny):
    r = charloom.train(source=str(text_file), out=str(tmp_path / "s"), max_steps=7, **tiny)
    assert r.progress.step == 7
    r = charloom.train(source=str(text_file), out=str(tmp_path / "e"), epochs=1.0, **tiny)
    data = charloom.prepare(charloom.load_corpus(charloom.CorpusConfig(source=str(text_file))),
                            charloom.BatchConfig(batch_size=4, seq_len=16, fit_chars=200_000))  # as a run with an n-gram
    assert r.progress.step == data.train.batches_in_epoch(0)


def test_time_budget_stops(tmp_path, text_file, tiny):
    t0 = time.perf_counter()
    r = charloom.train(source=str(text_file), out=str(tmp_path), max_time="2s", **tiny)
    assert r.progress.elapsed >= 2.0 and time.perf_counter() - t0 < 30
    assert r.stopped_by == "budget"


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup=10, min_lr_ratio=0.1, max_steps=100)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 0.09) == pytest.approx(1.0)
    assert learning_rate(cfg, 10, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 50, 0.5) == pytest.approx(0.55)
    assert learning_rate(cfg, 100, 1.0) == pytest.approx(0.1)
    assert learning_rate(cfg.replace(schedule="constant"), 80, 0.8) == 1.0


def test_durations():
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400 and parse_duration("2m30s") == 150
    assert parse_duration("45") == 45
    with pytest.raises(ConfigError, match="max_time: '10 minutes' is not a duration"):
        TrainConfig(max_time="10 minutes")
    assert TrainConfig().seconds == 600 and TrainConfig(max_steps=5).seconds == 0


def test_bad_options_fail_loudly(text_file):
    with pytest.raises(CharloomError, match="unknown option 'hiden_size'"):
        charloom.train(source=str(text_file), hiden_size=8)
    with pytest.raises(ConfigError, match="dropout: must be in"):
        charloom.ModelConfig(dropout=1.5)
    with pytest.raises(CharloomError, match="--device cuda: no CUDA GPU"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is here")
        charloom.train(source=str(text_file), device="cuda", max_steps=1)


def test_progress_output_shows_bpc_and_samples(tmp_path, text_file, tiny, capsys):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=5,
                   **{**tiny, "progress": True, "sample_length": 30})
    out = capsys.readouterr().out
    assert "val " in out and "bpc" in out and "--- sample at temperature 0.5 ---" in out


def test_resume_from_python_and_from_the_cli_continue_the_same_run_the_same_way(tmp_path, text_file, tiny):
    """Resuming names only the run folder: every other option is the saved run's, whichever door is used."""
    opts = dict(tiny, order="contiguous", max_steps=12, eval_every=4, cache_dir=str(tmp_path / "cache"))
    straight = charloom.train(source=str(text_file), out=str(tmp_path / "a"), **opts)
    for name in ("py", "cli"):
        charloom.train(source=str(text_file), out=str(tmp_path / name), **opts,
                       callback=lambda e: e["event"] == "step" and e["step"] == 5)
    resumed = charloom.train(out=str(tmp_path / "py"), resume=True)
    assert resumed.progress.step == 12 and resumed.steps_run == 7
    p = subprocess.run([sys.executable, "-m", "charloom", "train", "--out", str(tmp_path / "cli"), "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    want = checkpoint.load(tmp_path / "a" / "last.safetensors").model.state_dict()
    for name in ("py", "cli"):
        got = checkpoint.load(tmp_path / name / "last.safetensors")
        assert got.info["step"] == 12 and all(torch.equal(want[k], got.model.state_dict()[k]) for k in want)
    assert straight.progress.step == 12


def test_a_resume_file_that_does_not_fit_the_model_is_one_line_before_any_step(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=4, **tiny)
    ck = checkpoint.load(tmp_path / "last.safetensors")
    tensors = dict(ck.tensors)
    tensors["optim.0.exp_avg"] = torch.zeros(3)  # a hand-edited file: the checksum covers only what it holds
    checkpoint.save(tmp_path / "last.safetensors", ck.model, ck.vocab, records=ck.records, info=ck.info,
                    extra_tensors=tensors, extra_meta=ck.meta)
    with pytest.raises(CharloomError, match=r"last.safetensors: damaged resume file \(optimizer state of parameter 0\)"):
        charloom.train(out=str(tmp_path), resume=True, max_steps=8)


def test_a_weight_decay_given_on_resume_is_the_one_used(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=4, weight_decay=0.1, **tiny)
    t = train_mod.setup(*train_mod.configure(out=str(tmp_path), resume=True, max_steps=8, weight_decay=0.0).values())
    assert t.cfg.weight_decay == 0.0 and t.opt.param_groups[0]["weight_decay"] == 0.0
    assert t.opt.state_dict()["state"]  # the moments were restored all the same


def test_an_overwrite_that_cannot_start_keeps_the_old_run(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(CharloomError, match="--precision fp16"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, overwrite=True, precision="fp16",
                       **tiny)
    assert (tmp_path / "model.safetensors").read_bytes() == before and (tmp_path / "metrics.jsonl").exists()


def test_an_overwrite_that_fails_after_starting_leaves_nothing_of_the_old_run_to_resume(tmp_path, text_file, tiny):
    """--overwrite replaces the old run once the new one starts: a new run that then fails at its first step leaves
    neither the old model nor the old resume file (which --resume would have taken for this run), and says that
    nothing was saved."""
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **tiny)
    with pytest.raises(CharloomError, match=r"^step \d: the loss is (nan|inf); .*\(no evaluation had been saved yet\)"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=4, overwrite=True,
                       **dict(tiny, weight_decay=1e30, warmup=0))
    assert not (tmp_path / "last.safetensors").exists() and not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("duration", ["0", "0s", "0m0s", "0.0h"])
def test_a_zero_time_budget_is_refused_naming_the_flag(duration):
    with pytest.raises(ConfigError, match=r"^max_time \(--max-time\): must be longer than zero"):
        TrainConfig(max_time=duration)
    assert TrainConfig(max_time="", max_steps=3).seconds == 0  # no time budget at all is still allowed


@pytest.mark.parametrize("kind, options", [("stream", dict(val_fraction=0.0005)),
                                           ("records", dict(records=True, val_fraction=0.01))])
def test_a_validation_split_too_small_to_score_is_refused_before_any_step(tmp_path, text_file, tiny, kind, options):
    events = []
    with pytest.raises(CharloomError, match=r"^--val-fraction 0\.0\d+: the validation split of .* holds [01] "
                                            r"(character|record)s?, too few to score"):
        charloom.train(source=str(text_file), out=str(tmp_path), max_steps=20, callback=events.append,
                       **{**tiny, **options})
    assert events == [] and not (tmp_path / "last.safetensors").exists()
    result = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=3, **{**tiny, **options,
                                                                                         "val_fraction": 0.0})
    assert result.val is None and result.progress.step == 3  # asked for no validation: trains without


def test_leftover_temporary_files_of_dead_writers_are_removed_at_the_next_start(tmp_path, text_file, tiny):
    run = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(run), max_steps=3, **tiny)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer killed mid-save: its process is gone
    stale = run / f".last.safetensors.tmp-{dead.pid}"
    stale.write_bytes(b"half a file")
    live = run / f".model.safetensors.tmp-{os.getppid()}"  # a writer still running: not ours to remove
    live.write_bytes(b"being written")
    charloom.train(source=str(text_file), out=str(run), max_steps=5, resume=True)
    assert not stale.exists() and live.exists()
    live.unlink()
    assert sorted(p.name for p in run.iterdir() if p.name != "curves.png") == [
        ".charloom.lock", "last.safetensors", "metrics.jsonl", "model.safetensors"]  # the lock stays, let go


def test_quiet_runs_still_say_where_the_model_went(tmp_path, text_file, tiny, capsys):
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=5, **{**tiny, "sample_length": 30})
    best = charloom.load(tmp_path).info["best_val_bpc"]
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == f"model: {tmp_path / 'model.safetensors'} (best validation {best:.3f} bpc)"
    assert shown[1].startswith("model file ")  # then only the run's report: no bar, evaluations or samples on the way
    assert not any(line.startswith(("step ", "--- sample")) for line in shown)


def test_a_fresh_start_after_a_run_killed_before_its_first_save_logs_only_its_own_steps(tmp_path, text_file, tiny):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "val_bpc": 3.0}) + "\n" + '{"step": 1')  # then killed
    charloom.train(source=str(text_file), out=str(run), max_steps=10, **tiny)
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]


def test_a_run_with_an_n_gram_keeps_the_start_of_its_training_split_for_the_mixtures_fit(tmp_path, text_file, tiny):
    """fit_chars -1 (the default) settles to 200,000 in a run that mixes in an n-gram, on a continuous text or on
    records, and to 0 in one without an n-gram; the run records what it settled, so a resume splits alike."""
    with_ngram = charloom.train(source=str(text_file), out=str(tmp_path / "a"), max_steps=2, ngram=4, **tiny)
    assert checkpoint.run_configs(tmp_path / "a" / "last.safetensors")["batch"]["fit_chars"] == 200_000
    corpus = charloom.load_corpus(charloom.CorpusConfig(source=str(text_file)))
    whole = charloom.prepare(corpus, charloom.BatchConfig(batch_size=4, seq_len=16))
    assert with_ngram.model is not None and checkpoint.load(tmp_path / "a").info["ngram"]["characters"] == len(
        whole.train.stream)  # the n-gram counts all of the split, the part training left out included
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), max_steps=2, ngram=0, **tiny)
    assert checkpoint.run_configs(tmp_path / "b" / "last.safetensors")["batch"]["fit_chars"] == 0
    charloom.train(source="names", out=str(tmp_path / "c"), max_steps=2, ngram=4, **tiny)  # records: whole ones
    assert checkpoint.run_configs(tmp_path / "c" / "last.safetensors")["batch"]["fit_chars"] == 200_000
    names = charloom.load_corpus(charloom.CorpusConfig(source="names"))
    assert checkpoint.load(tmp_path / "c").info["ngram"]["characters"] == (
        np.diff(names.offsets)[charloom.prepare(names, charloom.BatchConfig(batch_size=4)).train.indices] + 2).sum()


def test_a_run_saved_before_the_fit_text_resumes_training_on_its_whole_split(tmp_path, text_file, tiny):
    """A resume file written before `fit_chars` existed: the run goes on over its whole training split, exactly
    as a straight run of that time (which took no fit text) would."""
    def strip(extra):
        del extra["batch"]["fit_chars"]

    opts = dict(tiny, max_steps=8, eval_every=0, fit_chars=0)
    assert resumed_from_an_older_file(tmp_path, text_file, opts, 3, strip)
    # through the Python API with batch options given whole: their unsettled fit_chars is the resumed run's
    shutil.rmtree(tmp_path / "a"), shutil.rmtree(tmp_path / "b")
    assert resumed_from_an_older_file(tmp_path, text_file, opts, 3, strip,
                                      batch=charloom.BatchConfig(batch_size=tiny["batch_size"], seq_len=tiny["seq_len"]))


def test_a_run_given_its_split_records_the_fit_text_that_split_made(tmp_path, text_file, tiny):
    """setup(data=...): the run records the split as given (a default -1 there cut nothing), so a resume makes the
    same split and goes on exactly as a straight run does."""
    corpus = charloom.CorpusConfig(source=str(text_file))
    data = charloom.prepare(charloom.load_corpus(corpus), charloom.BatchConfig(batch_size=4, seq_len=16))
    opts = dict(tiny, max_steps=6, eval_every=0, ngram=4)
    cfgs = train_mod.configure(corpus, out=str(tmp_path / "b"), **opts)
    train_mod.setup(*cfgs.values(), callback=lambda e: e["event"] == "step" and e["step"] == 2, data=data).run()
    assert checkpoint.run_configs(tmp_path / "b" / "last.safetensors")["batch"]["fit_chars"] == 0
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), resume=True, max_steps=6)
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), fit_chars=0, **opts)
    a, b = (checkpoint.load(tmp_path / x / "last.safetensors").tensors for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("weights."))


def test_a_signal_during_the_final_evaluation_is_not_lost(tmp_path, text_file, tiny):
    """SIGTERM while the budget's last evaluation runs: the run saves as a finished one and says it was stopped,
    so `charloom train` exits 128 + 15 as for a signal anywhere else."""
    def at_the_end(event):
        if event["event"] == "eval":
            os.kill(os.getpid(), signal.SIGTERM)

    result = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=4, eval_every=0, callback=at_the_end,
                            **{k: v for k, v in tiny.items() if k != "eval_every"})
    assert result.stopped_by == "SIGTERM" and result.progress.step == 4
    assert charloom.load(tmp_path).info["step"] == 4


def test_a_start_text_for_the_samples_that_the_vocabulary_cannot_read_is_refused_before_training(tmp_path, text_file,
                                                                                                 tiny):
    """--sample-start is read at the first evaluation, after minutes of training: it is checked before the first
    step instead, in one line naming the flag, and no run folder is written."""
    opts = dict(tiny, progress=True, sample_length=10, unknown="error", max_steps=4)
    with pytest.raises(charloom.CharloomError, match=r"^--sample-start: character 'Z' \(U\+005A\) at position 0"):
        charloom.train(source=str(text_file), out=str(tmp_path / "run"), sample_start="Zed", **opts)
    assert not (tmp_path / "run" / "last.safetensors").exists()
    quiet = charloom.train(source=str(text_file), out=str(tmp_path / "quiet"), sample_start="Zed",
                           **dict(opts, progress=False))  # no samples shown: nothing to refuse
    assert quiet.progress.step == 4


def test_a_network_too_large_to_train_here_is_refused_before_it_is_allocated(tmp_path, text_file, tiny, monkeypatch):
    """--hidden or --embedding far past this machine's memory: one line naming the options, nothing allocated (the
    count is made on the meta device); the bound is half of the machine's memory."""
    opts = dict(tiny, max_steps=1, out=str(tmp_path / "run"), attention=0)
    with pytest.raises(charloom.ConfigError, match=r"^hidden_size, head_hidden, attention, memory, embedding and "
                                                   r"num_layers \(--hidden 60000, --head-hidden -1, --attention 0, "
                                                   r"--memory 256, --embedding 8, --layers 1\): 18,0[\d,]+ parameters"):
        charloom.train(source=str(text_file), **dict(opts, hidden_size=60_000))
    monkeypatch.setattr(train_mod, "memory_cap", lambda: 10**6)
    assert charloom.train(source=str(text_file), **opts).progress.step == 1  # about 0.1 MB
    with pytest.raises(charloom.ConfigError, match="would need about 0.0 GB to train, more than the 0.0 GB"):
        charloom.train(source=str(text_file), **dict(opts, hidden_size=200, overwrite=True))  # about 3 MB
    with pytest.raises(charloom.ConfigError, match=r"\(--hidden 8, --head-hidden 60000, --attention 0, --memory 256, "
                                                   r"--embedding 8, --layers 1\)"):
        charloom.train(source=str(text_file), **dict(opts, hidden_size=8, head_hidden=60_000, overwrite=True))
    with pytest.raises(charloom.ConfigError, match=r"\(--hidden 8, --head-hidden -1, --attention 64, --memory 4096, "):
        charloom.train(source=str(text_file), **dict(opts, hidden_size=8, attention=64, memory=4096, overwrite=True))


def test_the_size_check_counts_an_attention_heads_scores_over_the_whole_piece(monkeypatch):
    """A piece is learned in one call, whose attention scores are (B, T, M + T): 4 rows of 8,000 characters learned
    whole hold 4 x 8,000 x 8,016 of them, 1 GB in fp32, which the bound refuses, where the same window in 8 pieces
    (scores 4 x 1,000 x 1,016 each) fits; the check once counted scores over twice the memory whatever the piece."""
    cfg = charloom.ModelConfig(vocab_size=70, hidden_size=16, embedding=8, attention=8, memory=16)
    monkeypatch.setattr(train_mod, "memory_cap", lambda: 10**9)
    train_mod._check_size(cfg, (4, 8000.0), 8)
    with pytest.raises(charloom.ConfigError, match=r"a batch of 4 x 8000 learned in pieces of 8,000 would need about "
                                                   r"[\d.]+ GB to train, more than the 1.0 GB allowed .*; give a "
                                                   r"smaller model, --batch-size or --seq-len$"):
        train_mod._check_size(cfg, (4, 8000.0), 1)


def test_the_size_check_counts_the_activations_of_one_piece_not_of_the_whole_window(monkeypatch):
    """A window learned in pieces holds one piece's graph at a time: under some memory bounds a batch of 32 x 256 in
    8 pieces fits where the same batch learned whole does not, and never the other way round."""
    cfg = charloom.ModelConfig(vocab_size=70, hidden_size=64, embedding=8)

    def fits(cap: int, pieces: int) -> bool:
        monkeypatch.setattr(train_mod, "memory_cap", lambda: cap)
        try:
            train_mod._check_size(cfg, (32, 256.0), pieces)
        except charloom.ConfigError:
            return False
        return True

    caps = [2**k for k in range(16, 32)]
    assert any(fits(c, 8) and not fits(c, 1) for c in caps)
    assert not any(fits(c, 1) and not fits(c, 8) for c in caps)
    assert fits(caps[-1], 1) and not fits(caps[0], 8)


def test_resume_refuses_a_text_that_changed_even_with_the_same_characters(tmp_path, text_file, tiny):
    """The vocabulary alone cannot tell: a text rewritten with the same characters (here shortened) would go on
    from the old run's place in the batches and compare its validation figures with another split's."""
    charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=3, **tiny)
    text_file.write_text(text_file.read_text()[: len(text_file.read_text()) // 2])
    with pytest.raises(CharloomError, match=r"^resume \(--resume\): .*play.txt is not the text the run in .* "
                                            r"trained on "
                                            r"\(1,026 characters now, 2,052 then\)"):
        charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=6, resume=True)


def test_resume_on_a_text_with_other_characters_says_the_vocabulary_changed(tmp_path, text_file, tiny):
    charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=3, **tiny)
    text_file.write_text(text_file.read_text() + "Zq")
    with pytest.raises(CharloomError, match=r"^resume \(--resume\): the corpus now gives a different vocabulary "
                                            r"than the run in .* \((\d+) ids now, (?!\1)\d+ then\)"):
        charloom.train(source=str(text_file), out=str(tmp_path / "run"), max_steps=6, resume=True)


def test_a_fine_tune_may_not_write_over_the_run_it_starts_from(tmp_path, text_file, tiny):
    """--init-from RUN --out RUN --overwrite would delete the parent's model while the new run records it as its
    parent: refused, naming the flag, and the parent stays."""
    charloom.train(source=str(text_file), out=str(tmp_path / "parent"), max_steps=2, **tiny)
    before = (tmp_path / "parent" / "model.safetensors").read_bytes()
    for parent in (tmp_path / "parent", tmp_path / "parent" / "model.safetensors"):
        with pytest.raises(CharloomError, match=r"^init_from \(--init-from\) .*parent.*: its model is in .*, "
                                                r"the folder this run "
                                                r"writes to \(--out\)"):
            charloom.train(source=str(text_file), out=str(tmp_path / "parent"), init_from=str(parent), max_steps=2,
                           overwrite=True, **{k: v for k, v in tiny.items() if k not in ("hidden_size", "num_layers",
                                                                                        "embedding")})
    assert (tmp_path / "parent" / "model.safetensors").read_bytes() == before


def test_a_finished_run_resumed_keeps_its_model_file_and_a_damaged_one_is_named_with_the_way_on(tmp_path, text_file,
                                                                                               tiny, capsys):
    """Resuming a run that already reached its budget takes no step: its model file, n-gram and all, is left as it
    was (not fitted again). One damaged since is named once, with where the run's last weights are."""
    run = tmp_path / "run"
    opts = dict(tiny, max_steps=4, ngram=4)
    charloom.train(source=str(text_file), out=str(run), **opts)
    model = run / checkpoint.MODEL_FILE
    before = (model.stat().st_ino, model.stat().st_mtime_ns)
    capsys.readouterr()
    charloom.train(source=str(text_file), out=str(run), resume=True, **opts)
    assert (model.stat().st_ino, model.stat().st_mtime_ns) == before and "nothing to do" in capsys.readouterr().out
    charloom.train(source=str(text_file), out=str(run), resume=True, **{**opts, "ngram": 3})  # another order asked
    assert checkpoint.load(run).info["ngram"]["longest_asked"] == 3
    ck = checkpoint.load(run)  # as a run stopped while it fitted the n-gram leaves it: the network alone
    checkpoint.save(model, ck.model, ck.vocab, records=False, info={k: v for k, v in ck.info.items() if k != "ngram"})
    charloom.train(source=str(text_file), out=str(run), resume=True, **opts)
    assert checkpoint.load(run).mixture is not None and checkpoint.load(run).info["ngram"]["longest_asked"] == 4
    data = model.read_bytes()
    model.write_bytes(data[:len(data) // 2])
    with pytest.raises(CharloomError, match=r"truncated.*the run's last weights are in .*last\.safetensors"):
        charloom.train(source=str(text_file), out=str(run), resume=True, **opts)
    assert "n-gram was not added" not in capsys.readouterr().out
    assert checkpoint.load(run / checkpoint.RESUME_FILE).mixture is None  # sampling can take it as it is


def test_the_size_check_counts_each_rows_attention_memory(tmp_path, text_file, tiny, monkeypatch):
    """An attention head's memory is carried whole from piece to piece, so no piece cuts it: a narrow network with
    a wide head over a long memory is refused for its state alone, not left to grow past the machine's memory."""
    opts = dict(tiny, max_steps=1, out=str(tmp_path / "run"), hidden_size=8, memory=4096)
    cfg = charloom.ModelConfig(vocab_size=40, **{k: opts[k] for k in ("hidden_size", "embedding", "memory")},
                               attention=65_536)
    monkeypatch.setattr(train_mod, "memory_cap", lambda: 8 * 10**9)  # as on a machine of 16 GB
    rows = opts["batch_size"]
    assert rows * evaluation.STATE_GRADIENTS * decoding.state_bytes(cfg) > 8 * 10**9
    with pytest.raises(charloom.ConfigError, match=r"--attention 65536, --memory 4096, .* to train, more than"):
        charloom.train(source=str(text_file), **dict(opts, attention=65_536))
    assert not (tmp_path / "run" / "last.safetensors").exists()


def _stopped_by(sig):
    def on(event):
        if event["event"] == "step" and event["step"] == 2:
            os.kill(os.getpid(), sig)
    return on


def test_sigterm_exits_without_fitting_the_n_gram_and_a_resumed_run_adds_it(tmp_path, text_file, tiny, capsys):
    """A scheduler's SIGTERM comes with a grace period that a minute's fit could outlast: the run saves and goes,
    its model file the network alone, and says so; continued, it fits the n-gram at its end."""
    result = charloom.train(source=str(text_file), out=str(tmp_path), max_steps=6, callback=_stopped_by(signal.SIGTERM),
                            **tiny)
    assert result.stopped_by == "SIGTERM" and result.progress.step == 2
    assert charloom.load(tmp_path).mixture is None
    assert f"{tmp_path / 'model.safetensors'} holds the network alone: stopped by SIGTERM" in capsys.readouterr().out
    charloom.train(out=str(tmp_path), resume=True, max_steps=6, progress=False)
    assert charloom.load(tmp_path).mixture is not None


def test_sigint_fits_the_n_gram_saying_so_and_a_second_leaves_the_network_alone(tmp_path, text_file, tiny, capsys,
                                                                                 monkeypatch):
    result = charloom.train(source=str(text_file), out=str(tmp_path / "a"), max_steps=6,
                            callback=_stopped_by(signal.SIGINT), **tiny)
    assert result.stopped_by == "SIGINT" and charloom.load(tmp_path / "a").mixture is not None
    assert "adding the n-gram to" in capsys.readouterr().out

    def interrupted(*args, **kwargs):  # the second Ctrl-C, while the n-gram is fitted
        raise KeyboardInterrupt

    monkeypatch.setattr(hooks, "fit_mixture", interrupted)
    with pytest.raises(KeyboardInterrupt):
        charloom.train(source=str(text_file), out=str(tmp_path / "b"), max_steps=6,
                       callback=_stopped_by(signal.SIGINT), **tiny)
    assert "the n-gram was not added" in capsys.readouterr().out
    ck = charloom.load(tmp_path / "b")
    assert ck.mixture is None and ck.info["step"] == 2


def test_overwrite_takes_the_old_runs_exported_files_too(tmp_path, text_file, tiny):
    """They would otherwise stay beside the new model and write the old run's text."""
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, **tiny)
    for name in ("model.onnx", "model.int8.onnx", "notes.txt"):
        (tmp_path / name).write_text("the old run's")
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, overwrite=True, **tiny)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.int8.onnx").exists()
    assert (tmp_path / "notes.txt").exists()  # what the run did not write is not its to take


def test_a_new_model_file_takes_the_exports_made_from_the_one_before(tmp_path, text_file, tiny, capsys):
    """An export made while the run trained would stay beside a newer model file and write the older one's text."""
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=2, **tiny)
    for name in ("model.onnx", "model.int8.onnx", "notes.txt"):
        (tmp_path / name).write_text("made from the model of step 2")
    capsys.readouterr()
    charloom.train(source=str(text_file), out=str(tmp_path), max_steps=4, resume=True, eval_every=0)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.int8.onnx").exists()
    assert (tmp_path / "notes.txt").exists()
    assert "the model.onnx and model.int8.onnx exported from the one before are removed" in capsys.readouterr().out


def test_a_trainer_in_a_with_block_runs_and_lets_its_folder_go(tmp_path, text_file, tiny):
    with train_mod.setup(*train_mod.configure(source=str(text_file), out=str(tmp_path), max_steps=2,
                                              **tiny).values()) as t:
        assert t.run().progress.step == 2
    assert t.lock is None and t.closed


def test_a_trainer_that_ran_or_was_closed_does_not_run_again(tmp_path, text_file, tiny):
    """Its folder may be another run's by then: it would write there without holding it."""
    cfgs = train_mod.configure(source=str(text_file), out=str(tmp_path), max_steps=2, **tiny).values()
    for ended in ("ran", "closed"):
        t = train_mod.setup(*cfgs)
        t.run() if ended == "ran" else t.close()
        with pytest.raises(CharloomError, match=r"^out \(--out\): this trainer has let .* go \(it ran, or was "
                                                r"closed\); set up another"):
            t.run()
        cfgs = train_mod.configure(source=str(text_file), out=str(tmp_path / "b"), max_steps=2, **tiny).values()
