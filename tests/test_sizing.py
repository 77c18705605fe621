import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import charloom
from charloom import checkpoint, runtime, sizing, trainer
from charloom.config import BatchConfig, CorpusConfig, ModelConfig, TrainConfig
from charloom.model import CharRNN
from charloom.runtime import Runtime

MODEL = ModelConfig(vocab_size=70)


def test_parameters_are_counted_from_the_real_modules():
    for cell in ("lstm", "gru", "rnn"):
        cfg = MODEL.replace(cell=cell, num_layers=2, embedding=0)
        assert sizing.parameters(cfg, 96) == CharRNN(cfg.replace(hidden_size=96)).num_parameters()
        # hashed context tables are memory the law was not fitted on: left out of the count
        hashed = cfg.replace(grams=3, gram_buckets=50)
        assert CharRNN(hashed.replace(hidden_size=96)).num_parameters() == sizing.parameters(cfg, 96) + 2 * 50 * 70
        assert sizing.parameters(hashed, 96) == sizing.parameters(cfg, 96)


def test_repeats_are_worth_less_than_new_text_but_never_nothing():
    assert sizing.discounted(5.0, 10.0, 15.4) == 5.0
    worth = [sizing.discounted(k * 10.0, 10.0, 15.4) for k in (1, 2, 4, 16, 1000)]
    assert worth == sorted(worth) and worth[1] < 20.0  # a second epoch counts for less than new text
    # the bound: 15.4 epochs' worth of repeats at most
    assert worth[-1] <= 10.0 * (1 + 15.4) and worth[-2] < 10.0 * (1 + 15.4)


def test_the_law_predicts_lower_for_more_parameters_and_more_characters():
    law = sizing.LAW
    assert law.bpc(1e6, 1e7) < law.bpc(1e6, 1e6)
    assert law.bpc(1e6, 1e7) < law.bpc(1e5, 1e7)
    # repeated text: the same characters from a small corpus are worth less than from a large one
    assert law.bpc(1e6, 1e7, unique=1e5) > law.bpc(1e6, 1e7, unique=1e8)


def test_useful_parameters_solve_the_compute_optimum():
    """For a compute budget C = 6 N D the law's best N (d/dN of the loss at fixed C is zero) must, paired with
    its own D = C / 6N, give back N from useful_parameters(D)."""
    law = sizing.LAW
    for c in (1e12, 1e14):
        ns = [10 ** (k / 200) for k in range(600, 1800)]
        best = min(ns, key=lambda n: law.bpc(n, c / (6 * n)))
        assert law.useful_parameters(c / (6 * best)) == pytest.approx(best, rel=0.02)


def brute_force(characters, unique=math.inf, rate=None):
    """The reference: every candidate's prediction, the best of them (the narrower of a tie), among the widths
    with no more parameters than the unique text can use (the narrowest always a candidate)."""
    cap = sizing.LAW.useful_parameters(unique) * (1 + sizing.EXCESS_DECAY) if math.isfinite(unique) else math.inf
    preds = {w: sizing.LAW.bpc(sizing.parameters(MODEL, w), characters(w), unique) for w in sizing.WIDTHS
             if w == sizing.WIDTHS[0] or sizing.parameters(MODEL, w) <= cap}
    best = min(preds.values())
    return min(w for w, b in preds.items() if b == best)


def time_budget(seconds, flops_per_s):
    """A machine whose rate is its FLOP rate over six FLOPs per parameter per character."""
    def rate(w):
        return flops_per_s / (6 * sizing.parameters(MODEL, w))
    return rate, (lambda w: seconds * rate(w))


def test_a_time_budget_takes_the_width_the_law_predicts_best():
    rate, chars = time_budget(600, 50e9)
    chosen = sizing.choose(MODEL, "600 s", math.inf, chars, rate)
    assert chosen.hidden_size == brute_force(chars)
    assert sizing.WIDTHS[0] < chosen.hidden_size < sizing.WIDTHS[-1]  # an interior optimum, not an end
    assert chosen.characters == pytest.approx(chars(chosen.hidden_size))
    assert chosen.predicted_bpc == pytest.approx(sizing.LAW.bpc(chosen.parameters, chosen.characters))


def test_a_run_with_the_early_pieces_is_predicted_as_if_it_trained_more_characters():
    law = sizing.LAW
    assert law.early_worth > 1.0
    assert law.bpc(1e6, 1e7, early=True) == pytest.approx(law.bpc(1e6, 1e7 * law.early_worth))
    rate, chars = time_budget(600, 50e9)
    chosen = sizing.choose(MODEL, "600 s", math.inf, chars, rate, early=True)
    best = min(sizing.WIDTHS, key=lambda w: (law.bpc(sizing.parameters(MODEL, w), chars(w), early=True), w))
    assert chosen.hidden_size == best
    assert chosen.characters == pytest.approx(chars(best))  # the characters it trains, not their worth
    assert chosen.predicted_bpc == pytest.approx(law.bpc(chosen.parameters, chosen.characters, early=True))
    assert chosen.predicted_bpc < sizing.choose(MODEL, "600 s", math.inf, chars, rate).predicted_bpc


def test_a_faster_machine_or_a_longer_budget_gets_a_wider_model():
    widths = [sizing.choose(MODEL, "", math.inf, time_budget(s, f)[1], time_budget(s, f)[0]).hidden_size
              for s, f in [(120, 20e9), (600, 20e9), (600, 100e9), (3600, 100e9)]]
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_a_small_corpus_gets_a_smaller_model_for_the_same_budget():
    rate, chars = time_budget(3600, 100e9)
    big = sizing.choose(MODEL, "", 1e8, chars, rate).hidden_size
    small = sizing.choose(MODEL, "", 2e5, chars, rate).hidden_size
    assert small < big
    # the law alone would keep widening on repeats of a small text: the width stops where parameters stop paying
    assert sizing.parameters(MODEL, small) <= sizing.LAW.useful_parameters(2e5) * (1 + sizing.EXCESS_DECAY)
    assert sizing.parameters(MODEL, small + 32) > sizing.LAW.useful_parameters(2e5) * (1 + sizing.EXCESS_DECAY)
    assert small == brute_force(chars, unique=2e5)


def test_a_tiny_text_gets_the_narrowest_width_and_a_cap_binds_without_a_time_limit():
    rate, chars = time_budget(3600, 100e9)
    assert sizing.parameters(MODEL, sizing.WIDTHS[0]) > sizing.LAW.useful_parameters(1e3) * (1 + sizing.EXCESS_DECAY)
    assert sizing.choose(MODEL, "", 1e3, chars, rate).hidden_size == sizing.WIDTHS[0]
    # no time limit: the compute-optimal stop alone would allow a width the small text cannot use
    cap = sizing.LAW.useful_parameters(2e5) * (1 + sizing.EXCESS_DECAY)
    chosen = sizing.choose(MODEL, "", 2e5, lambda w: 1e9)
    assert chosen.parameters <= cap < sizing.LAW.useful_parameters(1e9)
    assert sizing.parameters(MODEL, chosen.hidden_size + 32) > cap


def test_a_budget_in_characters_alone_stops_at_the_compute_optimal_size():
    chosen = sizing.choose(MODEL, "", math.inf, lambda w: 1e7)
    assert chosen.parameters <= sizing.LAW.useful_parameters(1e7) or chosen.hidden_size == sizing.WIDTHS[0]
    wider = [w for w in sizing.WIDTHS if w > chosen.hidden_size]
    assert sizing.parameters(MODEL, wider[0]) > sizing.LAW.useful_parameters(1e7) or \
        chosen.predicted_bpc <= sizing.LAW.bpc(sizing.parameters(MODEL, wider[0]), 1e7)


def test_the_rate_blends_whole_steps_and_the_early_pieces_by_the_budgets_share(monkeypatch):
    """Timed steps of 0.1 s for 128-character rows and 0.04 s for 32-character pieces: with 4 pieces over
    30% of the budget, a row trains 0.7 x 128 / 0.1 + 0.3 x 32 / 0.04 characters a second."""
    shapes = []

    def timed(model, shape, rt, widths, average=True):
        shapes.append((shape, average))
        return [0.1 if shape[1] == 128 else 0.04] * len(widths)

    monkeypatch.setattr(sizing, "_step_seconds", timed)
    rt = Runtime.start(device="cpu", precision="fp32")
    cfg = TrainConfig(eval_every=0, early_share=0.3)
    assert sizing.measure(MODEL, (16, 128.0), cfg, rt)(512) == pytest.approx(16 * 128 / 0.1)
    assert sizing.measure(MODEL, (16, 128.0), cfg, rt, pieces=4)(512) == pytest.approx(
        16 * (0.7 * 128 / 0.1 + 0.3 * 32 / 0.04))
    assert shapes == [((16, 128), True), ((16, 128), True), ((16, 32), False)]  # one average per batch


def test_a_run_with_late_pieces_is_timed_on_one_piece_of_its_windows(monkeypatch):
    """With 2 late pieces, a batch of 64 x 128 is learned as two steps of 64 x 64: the rate is a piece's
    characters over a piece's time, blended with the early pieces (4 of 32) as before, or with whole batches
    where the early share takes no pieces."""
    shapes = []

    def timed(model, shape, rt, widths, average=True):
        shapes.append((shape, average))
        return [{128: 0.1, 64: 0.05, 32: 0.03}[shape[1]]] * len(widths)

    monkeypatch.setattr(sizing, "_step_seconds", timed)
    rt = Runtime.start(device="cpu", precision="fp32")
    cfg = TrainConfig(eval_every=0, early_share=0.3)
    assert sizing.measure(MODEL, (64, 128.0), cfg, rt, pieces=4, late=2)(512) == pytest.approx(
        64 * (0.7 * 64 / 0.05 + 0.3 * 32 / 0.03))
    assert shapes == [((64, 64), False), ((64, 32), False)]  # the average is not a piece's: once a batch
    shapes.clear()
    assert sizing.measure(MODEL, (64, 128.0), cfg, rt, pieces=2, late=2)(512) == pytest.approx(64 * 64 / 0.05)
    assert sizing.measure(MODEL, (64, 128.0), cfg, rt, pieces=1, late=2)(512) == pytest.approx(
        64 * (0.7 * 64 / 0.05 + 0.3 * 128 / 0.1))
    assert shapes == [((64, 64), False), ((64, 64), False), ((64, 128), True)]  # one shape: timed once
    # a window cut in more pieces than it has characters is cut in one a character (Batch.pieces)
    assert [sizing._piece_chars(16.0, k) for k in (1, 2, 32)] == [16, 8, 1]
    assert (sizing._piece_chars(4.0, 1), sizing._piece_chars(1000.0, 2)) == (8, sizing.PROBE_SEQ)


@pytest.mark.parametrize("share, early", [(0.3, True), (0.0, False)])
def test_a_run_is_priced_with_the_early_pieces_only_when_it_takes_them(monkeypatch, share, early):
    monkeypatch.setattr(sizing, "_step_seconds", lambda model, shape, rt, widths, average=True: [0.1] * len(widths))
    rt = Runtime.start(device="cpu", precision="fp32")
    cfg = TrainConfig(eval_every=0, early_share=share, max_time="10m")
    fit = sizing.fit(MODEL, {16: (16, 128.0)}, cfg, rt, math.inf, pieces=4)
    assert fit.predicted_bpc == pytest.approx(sizing.LAW.bpc(fit.parameters, fit.characters, early=early))


@pytest.mark.kernel
def test_the_measured_rate_falls_with_width():
    rt = Runtime.start(device="cpu", precision="auto")
    rate = sizing.measure(MODEL, (16, 128.0), TrainConfig(), rt)
    rates = [rate(w) for w in (64, 256, 1024, 2048)]
    assert all(math.isfinite(r) and r > 0 for r in rates)
    assert rates == sorted(rates, reverse=True)
    assert torch.is_grad_enabled()


def test_a_run_without_a_width_takes_the_chosen_one_and_records_it(tmp_path, text_file, tiny):
    opts = {k: v for k, v in tiny.items() if k != "hidden_size"}
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), max_steps=3, **{**opts, "lr": 0.0})
    saved = charloom.load(tmp_path / "a")
    sized = saved.info["sizing"]
    lr = checkpoint.run_configs(tmp_path / "a" / checkpoint.RESUME_FILE)["train"]["lr"]
    assert lr == pytest.approx(sizing.peak_lr(sized["hidden_size"]))
    data = charloom.prepare(charloom.load_corpus(charloom.CorpusConfig(source=str(text_file))),
                            charloom.BatchConfig(batch_size=4, seq_len=16))
    expected = sizing.choose(saved.model.cfg, "", data.train_characters, lambda w: 3 * 4 * 16).hidden_size
    assert saved.model.cfg.hidden_size == sized["hidden_size"] == expected
    assert sized["budget"] == "3 steps" and sized["characters"] == 3 * 4 * 16
    # resuming keeps the width the run started with, whatever the new budget would choose
    charloom.train(out=str(tmp_path / "a"), resume=True, max_steps=400, progress=False)
    assert charloom.load(tmp_path / "a" / "last.safetensors").model.cfg.hidden_size == expected
    # and the record of how it was chosen stays in both files, as `charloom info` reports it
    for name in (checkpoint.MODEL_FILE, checkpoint.RESUME_FILE):
        assert charloom.load(tmp_path / "a" / name).info.get("sizing") == sized


def test_a_given_width_wins_and_nothing_is_measured(tmp_path, text_file, tiny, monkeypatch):
    monkeypatch.setattr(sizing, "measure", lambda *a: pytest.fail("measured although the width was given"))
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), max_time="1s", **tiny)
    saved = charloom.load(tmp_path / "b")
    assert saved.model.cfg.hidden_size == tiny["hidden_size"] and "sizing" not in saved.info


def test_a_model_needs_a_width():
    with pytest.raises(ValueError, match="hidden_size"):
        CharRNN(MODEL)
    with pytest.raises(charloom.ConfigError, match="hidden_size"):
        ModelConfig(hidden_size=-1)


def test_the_peak_learning_rate_falls_as_one_over_the_width_up_to_its_cap():
    assert sizing.peak_lr(640) == pytest.approx(5e-3)
    for w in (448, 640, 1024, 2048):
        assert sizing.peak_lr(w) * w == pytest.approx(5e-3 * 640)
    assert sizing.peak_lr(64) == sizing.peak_lr(256) == 1e-2 < 5e-3 * 640 / 256  # held at the cap
    rates = [sizing.peak_lr(w) for w in sizing.WIDTHS]
    assert rates == sorted(rates, reverse=True)


def _peak_of_run(tmp_path, text_file, tiny, name, **options):
    """(the peak rate the run's steps used, the rate its model file records) for a run with `options`."""
    steps = []
    opts = {**tiny, "warmup": 0, "schedule": "constant", **options}
    charloom.train(source=str(text_file), out=str(tmp_path / name), max_steps=3, callback=steps.append, **opts)
    recorded = charloom.checkpoint.run_configs(tmp_path / name / "last.safetensors")["train"]["lr"]
    return {e["lr"] for e in steps if e["event"] == "step"}, recorded


def _rates(events: list[dict]) -> set[float]:
    return {e["lr"] for e in events if e["event"] == "step"}


@pytest.mark.parametrize("width", [16, 352])  # at the cap, and below it
def test_a_run_without_a_rate_takes_its_widths_and_records_it(tmp_path, text_file, tiny, width):
    used, recorded = _peak_of_run(tmp_path, text_file, tiny, "a", lr=0.0, hidden_size=width, embedding=0)
    assert used == {recorded} and recorded == pytest.approx(sizing.peak_lr(width))


def test_a_given_rate_wins_and_a_resumed_run_keeps_its_own(tmp_path, text_file, tiny):
    used, recorded = _peak_of_run(tmp_path, text_file, tiny, "b", lr=3e-3)
    assert used == {recorded} == {3e-3} and sizing.peak_lr(tiny["hidden_size"]) != 3e-3
    for lr, expected, steps in ((0.0, 3e-3, 6), (2e-3, 2e-3, 9)):  # 0 asks for the width's rate: the run's own
        events = []
        charloom.train(out=str(tmp_path / "b"), resume=True, max_steps=steps, progress=False, lr=lr,
                       callback=events.append)
        assert _rates(events) == {expected}


@pytest.mark.parametrize("bad", ["fast", True])
def test_a_damaged_rate_in_a_resume_file_is_one_line(tmp_path, text_file, tiny, bad):
    _peak_of_run(tmp_path, text_file, tiny, "c", lr=3e-3)
    path = tmp_path / "c" / checkpoint.RESUME_FILE
    ck = checkpoint.load(path)
    meta = json.loads(json.dumps(ck.meta))
    meta["train"]["lr"] = bad  # JSON true is no rate, though Python counts it an int
    checkpoint.save(path, ck.model, ck.vocab, records=False, extra_tensors=dict(ck.tensors), extra_meta=meta)
    cfgs = {"corpus": CorpusConfig(source=str(text_file)), "batch": BatchConfig(batch_size=4, seq_len=16),
            "model": ModelConfig(hidden_size=16, embedding=8), "config": TrainConfig(out=str(path.parent), resume=True)}
    with pytest.raises(charloom.CharloomError) as e:
        trainer.setup(**cfgs)
    assert str(e.value) == f"{path}: damaged resume file (train lr {bad!r})"


def test_a_rate_must_be_positive_or_zero():
    for bad in (-1e-3, math.nan, math.inf):
        with pytest.raises(charloom.ConfigError, match="lr"):
            TrainConfig(lr=bad)


def test_the_help_and_the_readme_state_the_rate_rule_that_runs():
    def short(x: float) -> str:  # 5e-3, as the prose writes it
        return f"{x:.0e}".replace("e-0", "e-")

    rule, cap = f"{short(sizing.LR_AT_WIDTH)} x {sizing.LR_WIDTH} /", f"at most {short(sizing.LR_MAX)}"
    help_text = next(f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == "lr")
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())  # reflowed alike
    for where, text in (("--lr help", help_text), ("README.md", readme)):
        assert rule in text and cap in text, where
    assert sizing.peak_lr(sizing.LR_WIDTH) == sizing.LR_AT_WIDTH and sizing.peak_lr(8) == sizing.LR_MAX


@pytest.mark.parametrize("kind", ["cuda", "mps"])
def test_a_timed_step_waits_for_the_gpu_it_queued_work_on(monkeypatch, kind):
    """A GPU step returns once its kernels are queued: the width chooser's clock must wait for them, on Apple's
    GPU as on CUDA, or every width looks alike and the widest is taken."""
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    runtime.synchronize(torch.device(kind))
    assert waited == [kind]
    runtime.synchronize(torch.device("cpu"))
    assert waited == [kind]


def _timed_at(seconds_per_row: dict[int, float]):
    """A stand-in for the step timing: each batch of B rows takes seconds_per_row[B] x B at every width."""
    return lambda model, shape, rt, widths, average=True: [seconds_per_row[shape[0]] * shape[0]] * len(widths)


@pytest.mark.parametrize("per_row, chosen", [({16: 0.01, 32: 0.005}, 32),   # 32 costs what 16 does: twice the rate
                                             ({16: 0.01, 32: 0.01}, 16),    # the same rate: the smaller batch
                                             ({16: 0.01, 32: 0.0099}, 16)])  # a gain below the margin
def test_a_larger_batch_is_taken_only_for_a_predicted_gain_past_the_margin(monkeypatch, per_row, chosen):
    monkeypatch.setattr(sizing, "_step_seconds", _timed_at(per_row))
    rt = Runtime.start(device="cpu", precision="fp32")
    cfg = TrainConfig(eval_every=0, max_time="10m")
    both = sizing.fit(MODEL, {16: (16, 128.0), 32: (32, 128.0)}, cfg, rt, math.inf)
    alone = {b: sizing.fit(MODEL, {b: (b, 128.0)}, cfg, rt, math.inf) for b in (16, 32)}
    assert both.batch_size == chosen and alone[16].batch_size == alone[32].batch_size == 0  # no choice: none said
    assert dataclasses.replace(both, batch_size=0) == alone[chosen]
    gain = alone[16].predicted_bpc - alone[32].predicted_bpc
    assert (gain > sizing.BATCH_MARGIN) == (chosen == 32)
    assert f"and batch {chosen} chosen for 600 s" in both.line() and "--batch-size" in both.line()


def _cheap_at_32(monkeypatch) -> list[tuple[int, int]]:
    """Step timing where a batch of 32 costs what one of 16 does; returns the shapes timed (rows, characters
    per row)."""
    timed = []

    def steps(model, shape, rt, widths, average=True):
        timed.append(shape)
        return [0.01 * 16] * len(widths)

    monkeypatch.setattr(sizing, "_step_seconds", steps)
    return timed


def _rows(timed: list[tuple[int, int]]) -> set[int]:
    return {rows for rows, _ in timed}


def test_a_run_with_a_time_limit_chooses_its_batch_records_it_and_keeps_it_on_resume(tmp_path, text_file, tiny,
                                                                                     monkeypatch):
    timed = _cheap_at_32(monkeypatch)
    opts = {k: v for k, v in tiny.items() if k not in ("hidden_size", "batch_size")}
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), max_time="1s", **opts)
    saved = charloom.load(tmp_path / "a")
    assert _rows(timed) == {16, 32} and saved.info["sizing"]["batch_size"] == 32
    configs = checkpoint.run_configs(tmp_path / "a" / checkpoint.RESUME_FILE)
    assert configs["batch"]["batch_size"] == 32 and configs["train"]["late_pieces"] == 1
    timed.clear()
    charloom.train(out=str(tmp_path / "a"), resume=True, max_time="2s", progress=False)
    assert timed == [] and checkpoint.run_configs(tmp_path / "a" / checkpoint.RESUME_FILE)["batch"]["batch_size"] == 32


def test_a_run_given_late_pieces_times_its_widths_on_one(tmp_path, text_file, tiny, monkeypatch):
    timed = _cheap_at_32(monkeypatch)
    opts = {k: v for k, v in tiny.items() if k != "hidden_size"}
    charloom.train(source=str(text_file), out=str(tmp_path / "a"), max_time="1s", early_pieces=4, late_pieces=2,
                   **opts)
    assert (4, 8) in timed and (4, 16) not in timed  # half of a 16-character window: a late piece
    assert checkpoint.run_configs(tmp_path / "a" / checkpoint.RESUME_FILE)["train"]["late_pieces"] == 2


@pytest.mark.parametrize("options", [{"batch_size": 16, "max_time": "1s"}, {"max_steps": 3}, {"epochs": 1},
                                     {"max_steps": 3, "max_time": "1h"}, {"epochs": 1, "max_time": "1h"}])
def test_a_given_batch_or_a_budget_not_of_time_alone_keeps_batch_16(tmp_path, text_file, tiny, monkeypatch, options):
    """A step limit would read twice the text per step at 32, an epoch limit no more text at all."""
    timed = _cheap_at_32(monkeypatch)
    opts = {k: v for k, v in tiny.items() if k not in ("hidden_size", "batch_size")}
    charloom.train(source=str(text_file), out=str(tmp_path / "b"), **{**opts, **options})
    assert _rows(timed) <= {16} and charloom.load(tmp_path / "b").info["sizing"].get("batch_size") == 0
    configs = checkpoint.run_configs(tmp_path / "b" / checkpoint.RESUME_FILE)
    assert configs["batch"]["batch_size"] == 16 and configs["train"]["late_pieces"] == 1


def test_a_split_too_short_for_a_batch_of_32_is_given_16(tmp_path, tiny, monkeypatch):
    timed = _cheap_at_32(monkeypatch)
    text = tmp_path / "short.txt"
    text.write_text("abcdefgh" * 60)  # 456 training characters: 28 windows of 16, fewer than 32
    opts = {k: v for k, v in tiny.items() if k not in ("hidden_size", "batch_size")}
    charloom.train(source=str(text), out=str(tmp_path / "c"), max_time="1s", **opts)
    assert _rows(timed) == {16}
    assert checkpoint.run_configs(tmp_path / "c" / checkpoint.RESUME_FILE)["batch"]["batch_size"] == 16


def test_a_records_split_of_fewer_than_32_records_is_offered_the_rows_it_holds(tmp_path, tiny, monkeypatch):
    timed = _cheap_at_32(monkeypatch)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"name{i:02d}\n" for i in range(24)))
    opts = {k: v for k, v in tiny.items() if k not in ("hidden_size", "batch_size")}
    charloom.train(source=str(names), out=str(tmp_path / "d"), max_time="1s", val_fraction=0.1, records=True, **opts)
    rows = charloom.load(tmp_path / "d").info["sizing"]["batch_size"]
    assert _rows(timed) == {16, rows} and 16 < rows < 24  # the training records, all in one batch
