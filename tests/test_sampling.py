import pytest
import torch

from charloom import checkpoint
from charloom.cells import CELLS
from charloom.config import ModelConfig, SampleOptions
from charloom.errors import CharloomError, ConfigError
from charloom.model import CharRNN
import time

import numpy as np

from charloom.decoding import Stops as _Stops
from charloom.decoding import apply_repetition_penalty, choose, filter_logits, sample_options, uniforms
from charloom.sampling import Generator, Stepper
from charloom.vocab import Vocab


def test_temperature_zero_is_greedy():
    logits = np.random.default_rng(0).standard_normal((5, 30)).astype(np.float32)
    assert np.array_equal(choose(logits, temperature=0), logits.argmax(-1))
    assert np.array_equal(choose(logits, temperature=0, top_k=3, top_p=0.2), logits.argmax(-1))


def test_top_k_one_is_greedy_at_any_temperature():
    logits = np.random.default_rng(1).standard_normal((8, 30)).astype(np.float32)
    rng = np.random.default_rng(0)
    for t in (0.5, 1.0, 5.0):
        assert np.array_equal(choose(logits, temperature=t, top_k=1, rng=rng), logits.argmax(-1))


def test_top_k_keeps_exactly_k_even_when_logits_tie():
    logits = np.array([[1.0, 3.0, 3.0, 3.0, 3.0, 0.0]], dtype=np.float32)
    kept = np.isfinite(filter_logits(logits, top_k=2))
    assert int(kept.sum()) == 2 and kept[0, [1, 2, 3, 4]].sum() == 2
    rng = np.random.default_rng(1)
    draws = {int(choose(logits, 1.0, top_k=2, rng=rng)[0]) for _ in range(200)}
    assert len(draws) == 2 and draws <= {1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32)
    logits = np.log(probs)
    kept = lambda p: np.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.51) == [True, True, False, False]
    assert kept(0.8) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    shuffled = logits[:, [2, 0, 3, 1]]  # the order of ids does not matter
    assert np.isfinite(filter_logits(shuffled, top_p=0.8))[0].tolist() == [False, True, False, True]


@pytest.mark.parametrize("top_p", [1e-50, 1e-45, 1e-30, 1e-8])
def test_a_tiny_top_p_keeps_the_most_likely_character(top_p):
    # below ~1.4e-45 top_p is 0 in float32: every character was dropped and <pad> (id 0) sampled
    logits = np.random.default_rng(2).standard_normal((16, 40)).astype(np.float32)
    kept = np.isfinite(filter_logits(logits, top_p=top_p))
    assert kept.sum(-1).tolist() == [1] * 16 and kept[np.arange(16), logits.argmax(-1)].all()
    for u in (0.0, 0.5, 0.999):
        assert np.array_equal(choose(logits, 1.0, top_p=top_p, u=np.full(16, u, np.float32)), logits.argmax(-1))
    assert np.array_equal(choose(logits, 2.0, top_k=5, top_p=top_p, rng=np.random.default_rng(0)),
                          logits.argmax(-1))


def test_generation_at_a_tiny_top_p_is_greedy():
    g = model_for()
    greedy = g.generate("the ", 40, temperature=0)
    assert greedy[0] and g.generate("the ", 40, top_p=1e-50, seed=3) == greedy


def test_sampling_follows_the_distribution():
    probs = np.array([0.1, 0.6, 0.0, 0.3], dtype=np.float32)
    rng = np.random.default_rng(0)
    with np.errstate(divide="ignore"):
        logits = np.log(probs)[None]
    draws = np.concatenate([choose(logits, 1.0, rng=rng) for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[2] == 0  # a zero-probability id is never drawn
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_uniform_picks_by_inverse_cdf():
    logits = np.log(np.array([[0.25, 0.25, 0.5]], dtype=np.float32))
    assert choose(logits, 1.0, u=np.array([0.1]))[0] == 0
    assert choose(logits, 1.0, u=np.array([0.3]))[0] == 1
    assert choose(logits, 1.0, u=np.array([0.99]))[0] == 2


@pytest.mark.parametrize("logits, u, message", [
    ([[-np.inf, -np.inf, -np.inf]], None, r"^logits: every row needs a finite logit, and none may be NaN"),
    ([[0.0, 1.0, np.inf]], [0.5], r"^logits: every row needs a finite logit, and none may be NaN or \+inf"),
    ([[0.0, np.nan, 1.0]], None, r"^logits: every row needs a finite logit"),
    ([0.0, 1.0], None, r"^logits: must be \(B, V\) with V at least 1, got shape \(2,\)"),
    (np.zeros((2, 0)), None, r"^logits: must be \(B, V\)"),
    ([[0.0, 1.0]], [-1.0], r"^u: must be \(1,\) uniforms in \[0, 1\), one per row"),
    ([[0.0, 1.0]], [1.0], r"^u: must be \(1,\) uniforms"),
    ([[0.0, 1.0]], [0.1, 0.2], r"^u: must be \(1,\) uniforms"),
])
def test_logits_with_no_id_to_choose_or_uniforms_out_of_range_are_refused(logits, u, message):
    """A row of -inf has no id to choose: choosing <pad> (id 0) in silence hid the fault that made it; a uniform
    outside [0, 1) picks an id regardless of its probability."""
    with pytest.raises(ConfigError, match=message):
        choose(np.asarray(logits, dtype=np.float32), 1.0, u=None if u is None else np.asarray(u, np.float32))


def test_a_uniform_just_below_one_or_one_for_a_single_row_is_taken():
    logits = np.log(np.array([[0.25, 0.25, 0.5, 1e-30]], dtype=np.float32))
    assert choose(logits, 1.0, u=np.array([1 - 1e-12]))[0] == 2  # below 1 in float64, 1.0 in float32: not id 3
    assert choose(logits, 1.0, u=0.1)[0] == choose(logits, 1.0, u=np.array([0.1]))[0] == 0  # a scalar, one row


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 + 7, 2**62 - 1])
def test_uniform_streams_are_torchs_own(seed):
    """The seeded draws equal torch's CPU generator's, so a seed means the same text with or without torch."""
    want = torch.rand(600, generator=torch.Generator().manual_seed(seed)).numpy()
    assert np.array_equal(uniforms(seed, 600), want)


def test_choice_matches_an_independent_torch_reference():
    """The NumPy choice against the same rule written in torch: softmax, cumulative sum, first id past u."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        logits = torch.randn(16, 40, generator=gen) * 3
        u = torch.rand(16, generator=gen)
        for t, k, p in ((1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (0.5, 10, 0.8)):
            x = logits / t
            if k:
                x = torch.where(x >= torch.topk(x, k).values[:, -1:], x, float("-inf"))
            if p < 1:
                srt, order = x.sort(-1, descending=True)
                pr = srt.softmax(-1)
                drop = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order, pr.cumsum(-1) - pr >= p)
                x = x.masked_fill(drop, float("-inf"))
            cdf = x.softmax(-1).cumsum(-1)
            want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
            assert np.array_equal(choose(logits.numpy(), t, k, p, u=u.numpy()), want.numpy())


@pytest.mark.parametrize("kwargs, flag", [
    (dict(temperature=-0.1, top_k=0, top_p=1.0), "temperature"),
    (dict(temperature=1.0, top_k=-1, top_p=1.0), "top_k"),
    (dict(temperature=1.0, top_k=1.5, top_p=1.0), "top_k"),
    (dict(temperature=1.0, top_k=0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_k=0, top_p=1.5), "top_p"),
    (dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=0.5), "repetition_penalty"),
])
def test_invalid_options_name_the_flag(kwargs, flag):
    with pytest.raises(CharloomError, match=f"^{flag}: ") as options_error:
        SampleOptions(**kwargs)
    if "repetition_penalty" not in kwargs:
        with pytest.raises(CharloomError) as choose_error:
            choose(np.zeros((2, 5), np.float32), **kwargs)
        assert str(choose_error.value) == str(options_error.value)  # one rule, one message


def test_repetition_penalty_lowers_only_seen_characters():
    logits = np.array([[2.0, -1.0, 2.0, -1.0]], dtype=np.float32)
    seen = np.array([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 2.0, -1.0]]
    assert np.array_equal(apply_repetition_penalty(logits, seen, 1.0), logits)


# ---- the Generator -----------------------------------------------------------------------------------
TEXT = "the cat sat on the mat. the dog ate the hat.\n"


def model_for(cell="lstm", layers=2, embedding=6, records=False, seed=0, grams=0, head=-1, attention=0,
              shifted=True):
    vocab = Vocab.build(TEXT)
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(cell=cell, num_layers=layers, hidden_size=16, embedding=embedding, grams=grams,
                                gram_buckets=61, head_hidden=head, attention=attention, memory=5,
                                shifted_keys=shifted, vocab_size=len(vocab)))
    if attention:
        torch.nn.init.normal_(model.recall.out.weight, std=0.5)  # it starts by adding nothing
    return Generator(model, vocab, records=records)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("embedding, grams, head, attention, shifted", [
    (0, 0, 0, 0, True), (6, 0, -1, 0, True), (0, 3, 10, 0, True), (6, 4, 0, 0, True), (6, 0, -1, 4, True),
    (0, 3, 0, 3, True), (6, 0, -1, 4, False)])
def test_stepper_equals_the_model(cell, embedding, grams, head, attention, shifted):
    """Logits and state after each step, past the attention head's memory of 5 (its oldest slots dropped)."""
    g = model_for(cell, embedding=embedding, grams=grams, head=head, attention=attention, shifted=shifted)
    assert (g.model.readout is None) == (head == 0)
    model = g.model.eval()
    ids = torch.randint(4, len(g.vocab), (3, 12))
    whole, _ = model(ids)
    _, state = model(ids[:, :1])
    step = Stepper(model)
    for t in range(1, 12):
        logits, state = step(ids[:, t], state)
        torch.testing.assert_close(logits, whole[:, t], atol=1e-5, rtol=1e-5)
        for mine, want in zip(state, model(ids[:, :t + 1])[1]):
            torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("embedding, grams, attention", [(0, 0, 0), (6, 4, 0), (6, 0, 4)])
def test_a_start_read_in_pieces_equals_one_call(monkeypatch, cell, embedding, grams, attention):
    g = model_for(cell, embedding=embedding, grams=grams, attention=attention)
    start = TEXT * 3
    prefix = g._prefix(start)
    whole, whole_state = g.model.eval()(torch.tensor([prefix]))
    texts = g.generate(start, 30, n=2, seed=4)
    monkeypatch.setattr("charloom.decoding.READ_BYTES", 7 * g.row_bytes())  # 7 characters per call
    assert g.piece_rows() == (5 if attention else 7)  # an attention head's scores: pieces no longer than its memory
    last, state = g._start(prefix, 2)  # (2, V), each (L, 2, H)
    np.testing.assert_allclose(last, whole[:, -1].detach().numpy().repeat(2, 0), atol=1e-5, rtol=1e-5)
    for s, w in zip(state, whole_state):
        torch.testing.assert_close(s, w.expand_as(s), atol=1e-5, rtol=1e-5)
    assert g.generate(start, 30, n=2, seed=4) == texts


@pytest.mark.parametrize("embedding", [0, 8])
def test_a_long_start_on_a_large_vocabulary_is_read_in_bounded_pieces(embedding):
    # 20,000 characters of start on a 20,000-character vocabulary: (1, T, V) float32 logits would be 1.6 GB
    chars = [chr(0x4E00 + i) for i in range(20_000)]
    vocab = Vocab.build("".join(chars))
    model = CharRNN(ModelConfig(hidden_size=8, num_layers=1, embedding=embedding, vocab_size=len(vocab)))
    g = Generator(model, vocab)
    bound = 64 * 2**20  # bytes of (1, T, width) float32 work allowed at once

    def bounded(width):
        def check(_module, args):  # before the part computes, so a too large one is never allocated
            assert args[0].shape[1] * width * 4 <= bound, f"{tuple(args[0].shape)} into a {width}-wide part"
        return check

    model.head.register_forward_pre_hook(bounded(len(vocab)))  # (1, T, H) -> (1, T, V) logits
    real_inputs = model.inputs
    model.inputs = lambda ids: (bounded(embedding or len(vocab))(None, (ids,)), real_inputs(ids))[1]  # (1, T, E)
    start = "".join(np.random.default_rng(0).choice(chars, 20_000))
    assert len(g.generate(start, 5, seed=0)[0]) == 5
    assert g.memory_needed(1, 5, len(start)) < 200 * 2**20


def test_the_memory_check_counts_the_start_text(monkeypatch):
    g = model_for()
    assert g.memory_needed(1, 5, 10**6) - g.memory_needed(1, 5) > 10**6 * 8  # its ids as int64, at least
    monkeypatch.setattr("charloom.decoding.READ_BYTES", 2**20)
    monkeypatch.setattr("charloom.decoding.memory_cap", lambda: 6 * 10**7)
    g.check_memory(SampleOptions(start="a" * 200_000, length=5))  # read 1 MB at a time: its ids and a piece
    g.reads_in_pieces = False  # as a backend that reads its start in one call (the ONNX one)
    with pytest.raises(ConfigError, match=r"^start \(--start\): a start text of 200,000 characters needs about "
                                          r"[\d.]+ GB to read \([\d.]+ GB in all\), more than the 0.1 GB allowed"):
        g.generate("a" * 200_000, 5)


def test_reading_a_text_counts_the_state_an_attention_head_keeps(monkeypatch):
    """Scoring or tracing a text (the server's /v1/score and /v1/activations) holds the model's state whole, an
    attention head's memory above all: past half the machine's memory (made small) it is refused before any work,
    naming the text; the same text read by a model without the head is not."""
    from charloom.decoding import state_bytes

    g, plain = model_for(attention=4096), model_for()
    ids = g.vocab.encode("the cat sat")
    monkeypatch.setattr("charloom.decoding.memory_cap", lambda: state_bytes(g.config) // 2)
    for read in (lambda: g.read_logits(ids), lambda: g.trace([], ids)):
        with pytest.raises(ConfigError, match=r"^text: reading \d+ characters with this model needs about"):
            read()
    assert plain.read_logits(ids).shape == (len(ids), len(plain.vocab))


def test_the_logits_of_a_text_are_read_a_memory_at_a_time_as_one_call_reads_them(monkeypatch):
    """An attention head's scores over one call grow with its length squared (100,000 characters asked for 40 GB):
    a text's logits (`eval --color`, the server's /v1/score) are read no more than its memory at a time, the
    state carried, and come out as one call's."""
    g = model_for(attention=4)  # a memory of 5
    ids = g.vocab.encode((TEXT * 3)[:23])
    with torch.no_grad():
        whole, _ = g.model.eval()(torch.tensor([ids]))  # (1, T, V)
    calls, forward = [], g.model.forward
    monkeypatch.setattr(g.model, "forward", lambda x, state=None: calls.append(x.shape[1]) or forward(x, state))
    got = g.read_logits(ids)
    assert calls == [5, 5, 5, 5, 3]
    assert got.shape == (23, len(g.vocab)) and got.dtype == np.float32
    np.testing.assert_allclose(got, whole[0].numpy(), atol=1e-5, rtol=0)


def test_start_text_in_one_call_equals_one_character_at_a_time():
    g = model_for()
    model = g.model.eval()
    ids = torch.tensor([g.vocab.encode("the cat sat")])
    with torch.no_grad():
        whole, _ = model(ids)
        state, logits = None, None
        for t in range(ids.shape[1]):
            logits, state = model(ids[:, t:t + 1], state)
    torch.testing.assert_close(whole[:, -1].softmax(-1), logits[:, -1].softmax(-1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("grams", [0, 3])
def test_same_seed_same_text_alone_or_in_a_batch(grams):
    g = model_for(grams=grams)
    alone = g.generate("the ", 60, n=1, temperature=1.0, seed=7)
    batch = g.generate("the ", 60, n=4, temperature=1.0, seed=7)
    assert batch[0] == alone[0]
    assert g.generate("the ", 60, n=1, temperature=1.0, seed=9)[0] == batch[2]  # sample i uses seed + i
    assert len(set(batch)) > 1
    assert g.generate("the ", 60, n=4, temperature=1.0, seed=7) == batch


def test_parallel_samples_stop_independently_at_eos():
    g = model_for(records=True)
    eos = g.vocab.eos_id
    with torch.no_grad():  # make <eos> likely, so samples end at different places
        g.model.head.bias[eos] += 2.5
    texts = g.generate("", 50, n=16, temperature=1.0, seed=3)
    lengths = {len(t) for t in texts}
    assert len(lengths) > 3 and max(lengths) < 50
    for i, t in enumerate(texts):
        assert t == g.generate("", 50, n=1, temperature=1.0, seed=3 + i)[0]  # a row is the same alone


def test_streamed_output_equals_returned_text():
    g = model_for()
    pieces = [[] for _ in range(3)]
    texts = g.generate("the", 80, n=3, temperature=1.0, seed=5, on_text=lambda i, s: pieces[i].append(s))
    assert ["".join(p) for p in pieces] == texts
    streamed = [""] * 3
    for i, piece in g.stream("the", 80, n=3, temperature=1.0, seed=5):
        streamed[i] += piece
    assert streamed == texts


def test_stop_strings_end_a_sample_before_they_appear():
    g = model_for()
    full = g.generate("", 200, n=4, temperature=1.0, seed=11)
    stop = "t"
    cut = g.generate("", 200, n=4, temperature=1.0, seed=11, stop=[stop])
    for a, b in zip(full, cut):
        assert b == a.split(stop)[0]
    pieces = [""] * 4
    g.generate("", 200, n=4, temperature=1.0, seed=11, stop=["at", "e d"],
               on_text=lambda i, s: pieces.__setitem__(i, pieces[i] + s))
    again = g.generate("", 200, n=4, temperature=1.0, seed=11, stop=["at", "e d"])
    assert pieces == again and all("at" not in t and "e d" not in t for t in again)


def test_a_string_stop_is_one_stop_string():
    g = model_for()
    cut = g.generate("", 120, n=4, temperature=1.0, seed=11, stop="at")
    assert cut == g.generate("", 120, n=4, temperature=1.0, seed=11, stop=["at"])
    assert cut != g.generate("", 120, n=4, temperature=1.0, seed=11, stop=["a", "t"])
    streamed = [""] * 4
    for i, piece in g.stream("", 120, n=4, temperature=1.0, seed=11, stop="at"):
        streamed[i] += piece
    assert streamed == cut
    assert sample_options(SampleOptions(stop=("x", "y")), stop="the").stop == ("the",)


def cut_at_stops(text, stops):
    """The reference: the text before the stop string that ends first in it (of two ending together, the
    longer, which began first), and whether one did."""
    for end in range(1, len(text) + 1):
        ending = [len(s) for s in stops if s and text.endswith(s, 0, end)]
        if ending:
            return text[:end - max(ending)], True
    return text, False


def fed(text, stops):
    """What `_Stops` shows of `text` written one character at a time, and whether a stop string ended it."""
    finder, shown = _Stops(stops, 1), []
    for ch in text:
        piece, stopped = finder.feed(0, ch)
        shown.append(piece)
        if stopped:
            return "".join(shown), True
    return "".join(shown) + finder.held[0], False


@pytest.mark.parametrize("text, stops, expected", [
    ("the cat sat on the mat", ["at on", "t o", "mat"], "the cat sa"),  # the one that ends first wins
    ("the dog", ["d", "e d"], "th"),  # two end together: cut before the longer
    ("aaab", ["aab"], "a"),  # a partial match that slips by one character
    ("abab abac", ["abac", "zz"], "abab "),
    ("no stop here", ["xyz", "here!"], "no stop here"),
])
def test_the_cut_falls_just_before_the_first_stop_string(text, stops, expected):
    assert fed(text, stops)[0] == expected == cut_at_stops(text, stops)[0]


def test_text_that_could_begin_a_stop_string_is_held_back_until_it_cannot():
    finder = _Stops(["abx"], 1)
    assert [finder.feed(0, ch) for ch in "zab"] == [("z", False), ("", False), ("", False)]
    assert finder.held[0] == "ab" and finder.feed(0, "c") == ("abc", False) and finder.held[0] == ""


def test_long_stop_strings_cut_the_text_as_the_reference_does():
    g = model_for()
    full = g.generate("", 400, n=4, temperature=1.0, seed=7)
    never = "~"  # not in the vocabulary: a stop string holding it never completes
    stops = [full[0][:300] + never * 7600, full[1][20:220] + never * 7700, "e" * 7900, " " * 7899 + never,
             full[2][100:400] + never * 7600, full[3][250:262], full[1][330:334], full[0][380:400]]
    pieces = [""] * 4
    cut = g.generate("", 400, n=4, temperature=1.0, seed=7, stop=stops,
                     on_text=lambda i, s: pieces.__setitem__(i, pieces[i] + s))
    assert cut == [cut_at_stops(t, stops)[0] for t in full] == pieces
    assert all(len(cut[i]) < len(full[i]) for i in (0, 1, 3))  # stop strings taken from their own text


def test_finding_stop_strings_costs_time_linear_in_the_text():
    # eight stop strings of 7,900 characters, each matched almost to its end again and again
    stops = ["ab" * 3949 + "c", "a" * 7899 + "c", "b" * 7899 + "c", ("ab" * 3950)[:7899] + "a"] * 2
    text = ("ab" * 3949 + "b" * 7900 + "a" * 7900) * 2  # 47,392 characters, no stop string completed
    finder = _Stops(stops, 1)
    t0 = time.perf_counter()
    shown = [finder.feed(0, ch) for ch in text]
    elapsed = time.perf_counter() - t0
    assert not any(stopped for _, stopped in shown)
    assert "".join(p for p, _ in shown) + finder.held[0] == text
    assert elapsed < 20  # a second or two at most; rescanning each stop's prefixes at every character took hours


def test_generations_too_big_for_memory_are_refused_before_any_work(monkeypatch):
    g = model_for()
    g.check_memory(SampleOptions(n=1000, length=500))  # the ordinary range
    monkeypatch.setattr("charloom.decoding.memory_cap", lambda: 10**9)
    g.check_memory(SampleOptions(n=1000, length=500))
    with pytest.raises(ConfigError, match=r"^n \(--num-samples\) and length \(--length\): 10,000,000 samples of "
                                          r"500 characters need about [\d.]+ GB, more than the 1.0 GB allowed"):
        g.generate("", 500, n=10_000_000)
    with pytest.raises(ConfigError, match=r"1 samples of 1,000,000,000 characters"):
        next(iter(g.stream("", 10**9)))
    assert g.memory_needed(2000, 500) == 2 * g.memory_needed(1000, 500)


def test_greedy_generation_is_deterministic_without_seed():
    g = model_for()
    assert g.generate("the", 40, temperature=0) == g.generate("the", 40, temperature=0)


def test_unknown_start_characters_follow_the_policy():
    g = model_for()
    with pytest.warns(UserWarning, match="read as <unk>") as caught:
        out = g.generate("the 🎉Z", 10, temperature=0)
    with pytest.warns(UserWarning, match="read as <unk>") as streamed:
        list(g.stream("the 🎉Z", 10, temperature=0))
    # the warning names the caller's line, where the start text was given, not the library's
    assert {w.filename for w in [*caught, *streamed]} == {__file__}
    assert len(out[0]) == 10
    assert g.unknown_characters("the 🎉Z") == sorted(["🎉", "Z"])
    strict = Generator(g.model, Vocab(g.vocab.chars, unknown="error"))
    with pytest.raises(CharloomError, match=r"start text: character '🎉' \(U\+1F389\) at position 4"):
        strict.generate("the 🎉", 10)


def test_generator_leaves_training_mode_and_global_rng_alone():
    g = model_for()
    g.model.train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    g.generate("the", 20, temperature=1.0)
    assert g.model.training and torch.equal(torch.get_rng_state(), before)


def test_stepper_follows_new_weights():
    g = model_for()
    a = g.generate("the", 30, temperature=0)
    with torch.no_grad():
        for p in g.model.parameters():
            p.add_(torch.randn_like(p))
    b = g.generate("the", 30, temperature=0)
    ref = Generator(g.model, g.vocab).generate("the", 30, temperature=0)
    assert b == ref and a != b


def test_records_model_starts_from_bos_with_or_without_start():
    g = model_for(records=True)
    assert g._prefix("") == [g.vocab.bos_id]
    assert g._prefix("th") == [g.vocab.bos_id] + g.vocab.encode("th")
    c = model_for(records=False)
    assert c._prefix("") == [c.vocab.stoi["\n"]] and c._prefix("th") == c.vocab.encode("th")


def test_length_and_count_are_checked():
    g = model_for()
    with pytest.raises(CharloomError, match="length"):
        g.generate("", -1)
    with pytest.raises(CharloomError, match="--num-samples"):
        g.generate("", 5, n=0)
    assert g.generate("", 0, n=2) == ["", ""]


# ---- one options object -----------------------------------------------------------------------------
def test_options_object_and_keywords_give_the_same_text():
    g = model_for()
    opts = SampleOptions(start="the ", length=40, n=3, temperature=1.1, top_k=5, top_p=0.9, repetition_penalty=1.2,
                         seed=4, stop=("at",))
    by_keywords = g.generate("the ", 40, n=3, temperature=1.1, top_k=5, top_p=0.9, repetition_penalty=1.2, seed=4,
                             stop=["at"])
    assert g.generate(opts) == by_keywords
    assert g.generate(opts.replace(seed=5)) == g.generate(opts, seed=5)  # keywords change a given object
    streamed = [""] * 3
    for i, piece in g.stream(opts):
        streamed[i] += piece
    assert streamed == by_keywords


def test_generator_defaults_are_the_options_defaults():
    g = model_for()
    defaults = SampleOptions()
    assert len(g.generate(seed=1)[0]) == defaults.length
    assert g.generate(seed=1) == g.generate(SampleOptions(seed=1))
    assert g.generate(seed=1) == g.generate(seed=1, temperature=defaults.temperature)


def test_stream_checks_its_options_before_the_first_piece():
    g = model_for()
    with pytest.raises(ConfigError, match=r"^length: must be >= 0, got -1$"):
        g.stream("", -1)  # refused at the call, not when the first piece is asked for
    with pytest.raises(TypeError, match="temprature"):
        g.generate("the", 10, temprature=0.5)  # a misspelt keyword is a programming error


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=-1), r"length: must be >= 0, got -1"),
    (dict(n=0), r"n \(--num-samples\): must be >= 1, got 0"),
    (dict(temperature=10.5), r"temperature: must be in \[0, 10\] \(0 = greedy\), got 10.5"),
    (dict(temperature=float("nan")), r"temperature: nan is not a finite number"),
    (dict(top_p=float("inf")), r"top_p: inf is not a finite number"),
    (dict(temperature=10**400), r"temperature: integer too large to be a number"),
    (dict(repetition_penalty=11), r"repetition_penalty: must be in \[1, 10\] \(1 = off\), got 11.0"),
    (dict(seed=2**70), r"seed: must be in \[0, 2\*\*62\), got 1180591620717411303424"),
    (dict(seed=-1), r"seed: must be in \[0, 2\*\*62\), got -1"),
    (dict(seed=1.5), r"seed: 1.5 is not an integer or null"),
    (dict(start="ab\ud800"), r"start: U\+D800 at position 2 is a lone surrogate, not a character"),
    (dict(stop=["ok", "\udcff"]), r"stop\[1\]: U\+DCFF at position 0 is a lone surrogate"),
    (dict(stop="\n"), r"stop: '\\n' is not a list"),
])
def test_sample_options_refuse_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        SampleOptions(**kwargs)


def test_sample_options_round_trip_and_are_documented():
    import dataclasses

    opts = SampleOptions(start="Ma", stop=["\n"], seed=2**62 - 1)
    assert opts.stop == ("\n",) and SampleOptions.from_dict(opts.to_dict()) == opts
    assert SampleOptions(temperature=0).temperature == 0.0 and SampleOptions(top_p=1).top_p == 1.0
    for f in dataclasses.fields(SampleOptions):
        assert f.metadata.get("help"), f"SampleOptions.{f.name} has no help text"


@pytest.mark.parametrize("t", [1e-300, 1e-40, 1e-30, 1e-8])
def test_a_tiny_temperature_is_greedy_not_nan(t):
    logits = np.random.default_rng(0).standard_normal((6, 30)).astype(np.float32) * 20
    logits[:, 0] = -np.inf  # a banned id, as the Generator sets it
    assert np.array_equal(choose(logits, t, rng=np.random.default_rng(0)), logits.argmax(-1))


def test_generator_from_checkpoint(tmp_path):
    g = model_for(records=True)
    path = checkpoint.save(tmp_path / "m.safetensors", g.model, g.vocab, records=True)
    ck = checkpoint.load(path)
    gen = Generator.from_checkpoint(ck)
    assert gen.model is ck.model and gen.vocab is ck.vocab and gen.records is True
    assert gen.device == torch.device("cpu") and Generator.from_checkpoint(ck, device="cpu").device.type == "cpu"
    assert gen.generate("th", 30, n=2, temperature=1.0, seed=2) == g.generate("th", 30, n=2, temperature=1.0, seed=2)


def test_inference_never_imports_the_training_loop():
    import subprocess
    import sys

    code = ("import sys, charloom, charloom.sampling, charloom.evaluation, charloom.checkpoint, charloom.cli; "
            "print(sorted(m for m in sys.modules if m in ('charloom.trainer', 'charloom.hooks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_start_text_given_twice_is_refused_not_dropped():
    from charloom.decoding import sample_options

    with pytest.raises(ConfigError, match=r"^start: given twice, as 'a' and as start='b'"):
        sample_options("a", 5, start="b")
    with pytest.raises(ConfigError, match=r"^start: given twice"):
        model_for().generate("the", 10, start="a")
    assert sample_options("a", 5, seed=3) == SampleOptions(start="a", length=5, seed=3)
    assert sample_options("a", 5, start=None) == SampleOptions(start="a", length=5)  # None names no second one
