"""The n-gram of the training text and its mixture with the network: against a hand-written reference, through
every path that scores or writes (chunked == whole, adapt at rate 0 == static), and in model files."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

import charloom
from charloom import checkpoint, evaluation, ngram
from charloom.batching import Stream, eval_windows
from charloom.config import ModelConfig
from charloom.errors import CharloomError
from charloom.evaluation import adapt, evaluate_mixed, fit_mixture, network_predictions
from charloom.model import CharRNN
from charloom.ngram import SHAPE, Mixture, NGram, bits, contexts, fit
from charloom.runinfo import describe, lines
from charloom.sampling import Generator
from charloom.vocab import Vocab


V = 9


def reference(ids: list[int], order: int, beta: float, context: list[int], x: int, read: list[int] = (),
              given: range = range(0)) -> float:
    """Witten-Bell interpolation written out with dictionaries: p_k = (c(h, x) + beta u(h) p_{k-1}) / (c(h) +
    beta u(h)) for every order whose context h the text holds, from an add-one unigram. `read`: a second text
    counted beside `ids` (what a Reader has read: its first id is no one's target). `given`: ids never counted as
    what follows (nor in the unigram)."""
    uni = Counter(i for i in list(ids) + list(read[1:]) if i not in given)
    p = (uni[x] + 1) / (sum(uni.values()) + V)
    starts = unlabelled_starts(list(ids), given)
    for k in range(1, order + 1):
        h = tuple(context[-k:])
        if len(h) < k or -1 in h:
            break
        follow = Counter(i for i in followed(list(ids), list(h)) + followed(list(read), list(h)) if i not in given)
        follow.update(u[k] for u in starts if len(u) > k and tuple(u[:k]) == h and u[k] not in given)
        if not follow:
            break
        c, u = sum(follow.values()), len(follow)
        p = (follow[x] + beta * u * p) / (c + beta * u)
    return p


def unlabelled_starts(ids: list[int], given: range) -> list[list[int]]:
    """Each labelled record as it reads without its label: the id before the label (<bos>), then the record's ids
    up to the next <bos> (the id before the first label), whether that record has a label or not."""
    at = [p for p in range(1, len(ids)) if ids[p] in given]
    bos = ids[at[0] - 1] if at else None
    ends = [next((q for q in range(p + 1, len(ids)) if ids[q] == bos), len(ids)) for p in at]
    return [[ids[p - 1]] + ids[p + 1:end] for p, end in zip(at, ends)]


def followed(ids: list[int], context: list[int]) -> list[int]:
    """Every id that follows `context` in `ids`, one per time."""
    k = len(context)
    return [ids[i] for i in range(k, len(ids)) if ids[i - k:i] == context]


def held_longest(ids: list[int], context: list[int], order: int) -> tuple[int, int, int]:
    """(the longest order whose context `ids` holds, its count, its different followers), written out."""
    best = (0, 0, 0)
    for k in range(1, order + 1):
        after = followed(ids, list(context[-k:])) if -1 not in context[-k:] else []
        if not after:
            break
        best = (k, len(after), len(set(after)))
    return best


@pytest.fixture
def text():
    rng = np.random.default_rng(0)
    phrase = list(rng.integers(4, V, 12))  # characters only: no special ids
    ids = []
    for _ in range(30):  # repeats, with noise between them: contexts of every count
        ids += phrase[: rng.integers(4, 12)] + list(rng.integers(4, V, rng.integers(1, 6)))
    return ids


@pytest.mark.parametrize("order,beta", [(1, 1.0), (3, 4.0), (5, 0.5)])
def test_probabilities_equal_the_written_out_interpolation(text, order, beta):
    ng = NGram(np.array(text), V, order, beta)
    rng = np.random.default_rng(1)
    ctx = np.array([text[i - order:i] if i >= order else [-1] * (order - i) + text[:i]
                    for i in rng.integers(0, len(text), 40)])
    ctx[0, :] = rng.integers(0, V, order)  # a context the text may not hold
    full, *held = ng.probs(ctx)
    for r, row in enumerate(ctx):
        for x in range(V):
            assert full[r, x] == pytest.approx(reference(text, order, beta, list(row), x), rel=1e-9)
        assert tuple(int(a[r]) for a in held) == held_longest(text, list(row), order)
    assert np.allclose(full.sum(1), 1.0)
    for r in range(len(ctx)):  # one row at a time (how one sample is written) sums the same
        one, *one_held = ng.probs(ctx[r:r + 1])
        assert np.allclose(one[0], full[r], rtol=1e-12) and [int(a[0]) for a in one_held] == [a[r] for a in held]
    some = rng.integers(0, V, (len(ctx), 3))
    assert np.allclose(ng.probs(ctx, some)[0], np.take_along_axis(full, some, 1))


def test_given_ids_are_read_in_contexts_and_never_predicted(text):
    # ids 1-3 stand for labels: one after each <bos> (0), as a labelled records model's n-gram text holds them
    rng = np.random.default_rng(2)
    ids = []
    for start in range(0, len(text), 9):  # a fifth of the records without a label, as label dropout leaves them
        ids += [0, *([int(rng.integers(1, 4))] if rng.random() > 0.2 else []), *text[start:start + 9]]
    given = range(1, 4)
    ng = NGram(np.array(ids), V, 3, 4.0, given=given)
    at = rng.integers(3, len(ids), 60)
    ctx = np.array([ids[i - 3:i] for i in at])  # contexts with and without a label in them
    # and record starts read without their labels: counted too, so that writing without a label has counts
    ctx = np.concatenate([ctx, [[-1, 0, text[s]] for s in range(0, 90, 9)], [[0, *text[s:s + 2]] for s in (9, 27)]])
    full, *_ = ng.probs(ctx)
    for r, row in enumerate(ctx):
        for x in range(V):
            assert full[r, x] == pytest.approx(reference(ids, 3, 4.0, list(row), x, given=given), rel=1e-9)
    assert full[:, 1:4].max() <= 1.5 / len(ids)  # a given id is never what follows: the add-one floor alone
    assert np.array_equal(ng.shorter(2).probs(ctx[:, 1:])[0], NGram(np.array(ids), V, 2, 4.0, given=given).probs(
        ctx[:, 1:])[0])
    # a text whose every pair at some order is of a given id counts nothing there, and reads on
    bare = NGram(np.array([0, 1]), V, 3, given=given)
    assert [len(t.pairs) for t in bare.orders()] == [0]
    read = ngram.Reader(bare).read(np.array([[-1, 0, 1], [0, 1, 5]]), np.array([5, 6]))[0]
    assert read[0] == pytest.approx(bare.probs(np.array([[-1, 0, 1]]), np.array([[5]]))[0][0, 0])
    assert 0 < read[1] < 1


def test_a_reader_predicts_from_the_counts_of_everything_read_before(text, monkeypatch):
    train = text[:200]
    novel = [8, 8, 4, 5, 8, 8, 6, 4, 8, 7, 7, 5]
    z = np.array(text[150:] + novel * 3 + [4, 4, 4, 4])  # phrases the training text holds, and a new one
    ng = NGram(np.array(train), V, 4, 2.0)
    ctx, y = contexts(z[None, :-1], None, 4)[0], z[1:]
    r = ngram.Reader(ng)
    pieces = [r.read(ctx[a:b], y[a:b]) for a, b in ((0, 1), (1, 40), (40, 41), (41, len(y)))]
    p, longest, count, followers = (np.concatenate(part) for part in zip(*pieces))
    for t in range(len(y)):
        assert p[t] == pytest.approx(reference(train, 4, 2.0, list(ctx[t]), y[t], read=list(z[:t + 1])), rel=1e-9)
    whole = ngram.Reader(ng).read(ctx, y)  # one call reads its rows in order, as pieces do
    assert np.allclose(whole[0], p, rtol=1e-12) and np.array_equal(whole[1], longest)
    assert np.array_equal(whole[2], count) and np.array_equal(whole[3], followers)
    for t in range(len(y)):  # the longest context seen in the training text and the text read before it
        held = list(ctx[t][len(ctx[t]) - longest[t]:]) if longest[t] else []
        after = followed(train, held) + followed(list(z[:t + 1]), held)
        assert (count[t], followers[t]) == ((len(after), len(set(after))) if longest[t] else (0, 0))
    static = ng.probs(ctx, y[:, None])
    assert np.allclose(static[0][0, 0], p[0]) and (longest >= static[1]).all()
    last = slice(-len(novel) - 4, -4)  # the new phrase's third time: the reader has read it twice
    assert bits(p[last]) < bits(static[0][last, 0]) - 0.5

    monkeypatch.setattr(ngram, "READ_PAIRS", 4 * 50)  # counts 50 characters, then reads on without counting
    capped = ngram.Reader(ng)
    first, rest_read = capped.read(ctx[:30], y[:30])[0], capped.read(ctx[30:], y[30:])  # the cap inside a call
    rest = rest_read[0]
    for t in range(50, len(y)):  # past the cap: the followers of what was counted, no more
        held = list(ctx[t][len(ctx[t]) - rest_read[1][t - 30]:]) if rest_read[1][t - 30] else []
        after = followed(train, held) + followed(list(z[:51]), held)
        assert rest_read[3][t - 30] == (len(set(after)) if held else 0)
    assert np.allclose(first, p[:30], rtol=1e-12) and np.allclose(rest[:20], p[30:50], rtol=1e-12)
    for t in range(50, len(y)):
        assert rest[t - 30] == pytest.approx(reference(train, 4, 2.0, list(ctx[t]), y[t], read=list(z[:51])),
                                             rel=1e-9)
    assert np.allclose(capped.read(ctx[50:], y[50:])[0], rest[20:])  # and reads the same again


def test_a_reader_of_the_shortest_ngram_and_of_nothing(text):
    one = ngram.Reader(NGram(np.array([5]), V, 4))  # no pairs of any order: the add-one unigram, counting
    z = np.array(text[:40])
    ctx, y = contexts(z[None, :-1], None, 4)[0], z[1:]
    p, longest, count, followers = one.read(ctx, y)
    expected = [(1 + (x == 5) + list(y[:t]).count(x)) / (1 + t + V) for t, x in enumerate(y)]
    assert np.allclose(p, expected) and not longest.any() and not count.any() and not followers.any()
    empty = one.read(ctx[:0], y[:0])
    assert all(len(part) == 0 for part in empty)


def test_reading_mixes_with_the_static_weights_where_a_file_has_none(text):
    ng = NGram(np.array(text), V, 3)
    rng = np.random.default_rng(4)
    p_net, top = rng.uniform(0.1, 0.5, 20), rng.uniform(0.5, 1, 20)
    predicted = rng.uniform(0, 1, 20), rng.integers(0, 4, 20), rng.integers(0, 9, 20), rng.integers(0, 9, 20)
    w, r = rng.uniform(0, 1, (4, *SHAPE)), rng.uniform(0, 1, (4, *SHAPE))
    static = Mixture(ng, w)
    assert np.array_equal(static.mix(p_net, top, predicted, reading=True), static.mix(p_net, top, predicted))
    assert not np.allclose(Mixture(ng, w, r).mix(p_net, top, predicted, reading=True),
                           Mixture(ng, w, r).mix(p_net, top, predicted))


def test_contexts_carry_the_ids_read_before():
    x = np.array([[1, 2, 3, 4, 5]])
    whole = contexts(x, None, 3)
    assert whole[0, 0].tolist() == [-1, -1, 1] and whole[0, 4].tolist() == [3, 4, 5]
    second = contexts(x[:, 3:], whole[:, 2], 3)
    assert np.array_equal(second, whole[:, 3:])


@pytest.mark.parametrize("order", [1, 3, 5])
def test_contexts_leave_out_the_ids_the_counts_never_hold(order):
    # a labelled record is read as <bos> <label> characters; the n-gram's text holds it as <bos> characters
    rng = np.random.default_rng(0)
    labels = range(4, 7)
    rows = []
    for _ in range(6):
        chars = list(rng.integers(7, V, 9))
        rows.append([1, int(rng.integers(4, 7))] + chars if rng.random() < 0.7 else [1] + chars + [2])
    x = np.array(rows)
    got = contexts(x, None, order, labels)
    for r, row in enumerate(rows):
        plain = [i for i in row if i not in labels]
        want = contexts(np.array([plain]), None, order)[0]  # (T - labels, order)
        t_plain = np.cumsum([i not in labels for i in row]) - 1  # each position's last id left in
        assert np.array_equal(got[r], want[t_plain])
    assert np.array_equal(contexts(x, None, order, range(0)), contexts(x, None, order))


def test_fitted_weights_lean_on_the_ngram_where_it_knows_and_beat_both_alone(text):
    ids = np.array(text * 3)
    ng = NGram(ids[: len(ids) // 2], V, 4)
    ctx = contexts(ids[None, :-1], None, 4)[0][len(ids) // 2:]
    y = ids[len(ids) // 2 + 1:]
    p_net = np.full(len(y), 1.0 / V)  # a network that has learned nothing
    top = np.full(len(y), 1.0 / V)
    m = fit(ng, p_net, top, ctx, y)
    mixed = m.target_probs(p_net, top, ctx, y)
    alone = ng.probs(ctx, y[:, None])[0][:, 0]
    unfitted = Mixture(ng, np.full((5, *SHAPE), 0.8)).target_probs(p_net, top, ctx, y)  # where EM starts
    assert bits(mixed) < bits(unfitted) and bits(mixed) < bits(p_net) and bits(mixed) <= bits(alone) + 0.1
    assert m.weights.shape == (5, *SHAPE) and m.weights[4].min() < 0.5  # long contexts: mostly the n-gram
    read = ngram.Reader(ng).read(ctx, y)  # the weights for reading: fitted to what a reader predicts
    assert bits(m.mix(p_net, top, read, reading=True)) < bits(Mixture(ng, m.weights).mix(p_net, top, read))


def test_each_orders_probabilities_in_one_pass_equal_the_shorter_ngrams(text):
    ids = np.array(text)
    ng = NGram(ids[:200], V, 6)
    ctx = contexts(ids[None, 199:-1], None, 6)[0].copy()  # (N, 6): held contexts, unseen ones, text starts
    ctx[:3, :2] = -1
    y = ids[200:]
    steps = list(ng.by_order(ctx, y))
    assert len(steps) == 6
    for k, (p, *held) in enumerate(steps, 1):
        cut = ng.shorter(k)
        assert cut.orders() == ng.orders()[:k]  # shared, not rebuilt
        q, *q_held = cut.probs(ctx[:, -k:], y[:, None])
        assert np.array_equal(p, q[:, 0]) and all(np.array_equal(a, b) for a, b in zip(held, q_held, strict=True))
        assert np.allclose(p, [reference(list(ids[:200]), k, 4.0, list(c), x) for c, x in zip(ctx, y)], rtol=1e-12)
    ctx[:, :-1] = -1  # one id of context each: the pass ends after order 1 and the rest repeat it
    short = list(ng.by_order(ctx, y))
    assert len(short) == 6 and all(np.array_equal(p, short[0][0]) for p, *_ in short)
    assert np.array_equal(short[5][0], ng.probs(ctx, y[:, None])[0][:, 0]) and short[5][1].max() == 1


def test_a_bucket_steps_followers_as_documented():
    followers = np.array([0, 1, 2, 3, 4, 5, 8, 9, 10**6])
    zero = np.zeros(len(followers), dtype=np.int64)
    index = ngram.bucket(zero + 2, zero + 6, followers, np.full(len(followers), 0.5))
    assert (index // ngram.CONFIDENCE % ngram.FOLLOWERS).tolist() == [0, 0, 1, 2, 2, 3, 3, 3, 3]
    assert (index % ngram.CONFIDENCE == 2).all()  # the network's sureness 0.5: the third fifth
    assert (index // (ngram.CONFIDENCE * ngram.FOLLOWERS) == 2 * ngram.BUCKETS + 2).all()  # order 2, log2(7) -> 2
    assert index.max() < 3 * math.prod(SHAPE)


@pytest.mark.parametrize("gains,kept", [([0, 0.5, 0.5001, 1000], 4), ([0, 0.25, 0.5, 0.75], 1),
                                        ([0, 1, 3, 1], 3), ([0, 0.5, 0.75, 1.25], 2), ([0], 1), ([0, -100, -200], 1)])
def test_a_longer_order_is_kept_only_where_it_pays(gains, kept):
    """gains: what each order saves against order 1, in units of ORDER_GAIN."""
    assert ngram.shortest_best([2.0 - g * ngram.ORDER_GAIN for g in gains]) == kept
    assert ngram.shortest_best([ngram.ORDER_GAIN, 0.0]) == 2  # saving exactly the bar keeps the longer order


def test_the_order_chosen_is_long_for_a_repeating_text_and_short_for_a_random_one():
    rng = np.random.default_rng(1)
    phrase = list(rng.integers(0, V, 40))
    repeating = np.array(phrase * 40)  # each character follows from the last few: long orders help
    scattered = rng.integers(0, V, 1600)  # no context predicts anything: longer orders only add noise
    chosen = {}
    for name, ids in (("repeating", repeating), ("scattered", scattered)):
        ng, half = NGram(ids[:800], V, 8), 800
        ctx, y = contexts(ids[None, half - 1:-1], None, 8)[0], ids[half:]
        p_net = np.full(len(y), 1.0 / V)
        chosen[name] = ngram.choose_order(ng, p_net, p_net, ctx, y)
        a, b = slice(0, len(y) // 2), slice(len(y) // 2, None)  # the same cross-fit, written out order by order
        scored = []
        for k in range(1, 9):
            cut = ng.shorter(k)
            total = sum(bits(fit(cut, p_net[f], p_net[f], ctx[f, -k:], y[f]).target_probs(
                p_net[s], p_net[s], ctx[s, -k:], y[s])) * len(y[s]) for f, s in ((a, b), (b, a)))
            scored.append(total / len(y))
        kept = scored[chosen[name] - 1]
        assert kept - min(scored) < ngram.ORDER_GAIN  # nothing longer pays on it ...
        assert all(scored[k - 1] - min(scored[k - 1:]) >= ngram.ORDER_GAIN  # ... and nothing shorter does
                   for k in range(1, chosen[name]))
    assert chosen["scattered"] <= 2 < chosen["repeating"]


def test_a_run_fits_the_order_then_the_weights_to_counts_of_as_much_text_as_the_model_holds(text, monkeypatch):
    ids = np.array(text * 4)
    model = CharRNN(ModelConfig(vocab_size=V, hidden_size=8, embedding=4)).eval()
    monkeypatch.setattr(ngram, "MAX_PAIRS", 6 * 120)  # order 6 counts 120 characters, order 2 counts 360
    monkeypatch.setattr(ngram, "choose_order", lambda *args: 2)
    assert fit_mixture(model, ids, V, 0, 6).ngram.order == 6  # too few characters to choose on: the asked order
    monkeypatch.setattr(evaluation, "CHOOSE_CHARS", 2)
    m = fit_mixture(model, ids, V, 0, 6)
    assert m.ngram.order == 2 and np.array_equal(m.ngram.ids, ids[-360:]) and m.weights.shape == (3, *SHAPE)
    start = len(ids) - len(ids) // 10
    p_net, top, ctx, y = network_predictions(model, eval_windows(Stream(ids, [(start, len(ids))]), 1024, 1, 0), 2)
    expected = fit(NGram(ids[:start][-360:], V, 2), p_net, top, ctx, y)  # not the 120 the order-6 counts held
    assert np.allclose(m.weights, expected.weights) and np.allclose(m.reading, expected.reading)
    assert m.exponents is None  # fitted on characters the network may have learned: no last layer
    monkeypatch.setattr(ngram, "PRODUCT_FLOATS", 12 * V)  # the last layer: fitted on 12 evenly spaced characters
    m = fit_mixture(model, ids, V, 0, 6, held=len(ids) - start)  # ... of characters training left out
    x = torch.from_numpy(ids[start:-1])[None]
    with torch.no_grad():
        logits = torch.log_softmax(model(x)[0][0].double(), -1).numpy()  # (N, V): the held text read whole
    rows = np.arange(0, len(y), -(-(len(ids) - start) // 12))
    assert len(rows) == 12 and len(y) > 100
    assert np.allclose(m.exponents, ngram.fit_exponents(expected, logits[rows], ctx[rows], y[rows]), atol=1e-5)


def test_a_nan_from_the_network_leaves_the_weights_finite_and_bad_weights_are_never_saved(text, tmp_path):
    ids = np.array(text)
    ng = NGram(ids[:200], V, 3)
    ctx, y = contexts(ids[None, 199:-1], ids[None, 196:199], 3)[0], ids[200:]
    p_net = np.full(len(y), 0.2)
    p_net[5] = np.nan
    m = fit(ng, p_net, p_net, ctx, y)
    assert np.isfinite(m.weights).all() and ((m.weights >= 0) & (m.weights <= 1)).all()
    logits = np.random.default_rng(7).normal(size=(len(y), V))
    logits[5] = np.nan
    m.exponents = ngram.fit_exponents(m, logits, ctx, y)
    assert np.isfinite(m.exponents).all() and (m.exponents >= 0).all()
    m.exponents[1, 0] = np.inf
    with pytest.raises(CharloomError, match="powers"):
        checkpoint.save(tmp_path / "m.safetensors", small_model(V), _vocab(), records=False, mixture=m)
    m.weights[0, 0, 0] = np.nan
    with pytest.raises(CharloomError, match="weights"):
        checkpoint.save(tmp_path / "m.safetensors", small_model(V), _vocab(), records=False, mixture=m)
    assert not (tmp_path / "m.safetensors").exists()


def test_log_probs_for_writing_equal_the_scored_mixture(text):
    ng = NGram(np.array(text), V, 3)
    m = Mixture(ng, np.random.default_rng(2).uniform(0, 1, (4, *SHAPE)))
    logits = 3 * np.random.default_rng(3).normal(size=(6, V)).astype(np.float32)  # sure and unsure rows
    ctx = np.array(text[:18]).reshape(6, 3)
    lp = m.log_probs(logits, ctx)
    p_net = torch.softmax(torch.from_numpy(logits).double(), -1).numpy()
    for x in range(V):
        target = np.full(6, x)
        assert np.allclose(np.exp(lp[:, x]), m.target_probs(p_net[:, x], p_net.max(1), ctx, target), rtol=1e-5)
    assert np.allclose(np.exp(lp).sum(1), 1.0, atol=1e-5)
    m.exponents = np.random.default_rng(4).uniform(0, 2, (4, ngram.EXPONENTS))  # the last layer, written out:
    lp = m.log_probs(logits, ctx)
    longest = ng.probs(ctx)[1]
    product = np.stack([np.prod([p_net[:, x], ng.probs(ctx, np.full((6, 1), x))[0][:, 0],
                                 m.target_probs(p_net[:, x], p_net.max(1), ctx, np.full(6, x))]
                                ** m.exponents[longest].T, axis=0) for x in range(V)], 1)  # (6, V)
    assert np.allclose(np.exp(lp), product / product.sum(1, keepdims=True), rtol=1e-5)


def test_the_last_layer_softens_a_network_sure_where_the_text_is_new_and_is_the_best_fit(text):
    rng = np.random.default_rng(6)
    ids = np.array(text * 2)
    ng = NGram(ids[:150], V, 3)
    ctx, y = contexts(ids[None, 149:-1], None, 3)[0], ids[150:]
    guess = np.where(rng.uniform(size=len(y)) < 0.4, y, rng.integers(4, V, len(y)))  # right 40% of the time
    logits = 6.0 * np.eye(V)[guess] + rng.normal(0, 0.1, (len(y), V))  # ... and always all but certain
    p_net = torch.softmax(torch.from_numpy(logits), -1).numpy()
    m = fit(ng, p_net[np.arange(len(y)), y], p_net.max(1), ctx, y)
    m.exponents = ngram.fit_exponents(m, logits, ctx, y)
    assert m.exponents.shape == (4, ngram.EXPONENTS) and (m.exponents >= 0).all()
    loss = lambda e: -Mixture(ng, m.weights, None, e).log_probs(logits, ctx)[np.arange(len(y)), y].sum()  # noqa
    linear = np.tile(ngram.LINEAR, (4, 1))
    assert loss(m.exponents) < loss(linear) - 0.02 * len(y)
    held = np.unique(ng.probs(ctx)[1])
    assert (m.exponents[held, 0] + m.exponents[held, 2] < 1).all()  # the sure network, softened
    theta = torch.tensor(linear, requires_grad=True)  # the reference: the same loss and prior, minimised by L-BFGS
    inputs, groups = (torch.from_numpy(x) for x in m.inputs(logits, ctx))
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        z = torch.einsum("nk,knv->nv", theta.clamp(0, ngram.MOST_EXPONENT)[groups], inputs)
        loss = torch.nn.functional.cross_entropy(z, torch.from_numpy(y), reduction="sum") \
            + ngram.EXPONENT_PRIOR / 2 * ((theta - torch.from_numpy(linear)) ** 2).sum()
        loss.backward()
        return loss
    opt.step(objective)
    assert np.allclose(m.exponents, theta.detach().clamp(0, ngram.MOST_EXPONENT).numpy(), atol=2e-3)


def small_model(vocab_size: int) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(hidden_size=16, embedding=4, vocab_size=vocab_size)).eval()


@pytest.mark.kernel
@pytest.mark.parametrize("window,streams", [(7, 1), (64, 1), (5, 3)])
def test_scoring_in_windows_equals_reading_the_whole_text_with_its_ngram(text, window, streams):
    ids = np.array(text)
    model = small_model(V)
    m = fit_mixture(model, ids[:300], V, 0, 4, held=30)
    assert m.exponents is not None
    gen = Generator(model, _vocab())
    gen.mixture = m
    if streams == 1:
        ev = evaluate_mixed(model, m, eval_windows(Stream(ids, [(0, len(ids))]), window, 1, 0))
        lp = gen.read_logits(ids.tolist())[:-1]  # (T - 1, V): log-probabilities of the mixture
        whole = -np.take_along_axis(lp, ids[1:, None], 1).mean()
        assert ev.characters == len(ids) - 1 and ev.loss == pytest.approx(whole, rel=1e-5)
        net, top = network_predictions(model, eval_windows(Stream(ids, [(0, len(ids))]), window, 1, 0), 4)[:2]
        assert np.all(top >= net)
        assert ev.network_loss == pytest.approx(float(-np.log(net).mean()), rel=1e-9)
    else:  # several streams: each its own contexts, every character once
        ev = evaluate_mixed(model, m, eval_windows(Stream(ids, [(0, len(ids))]), window, streams, 0))
        assert ev.characters < len(ids) and ev.loss < ev.network_loss


@pytest.mark.kernel
@pytest.mark.parametrize("streams", [1, 3])
def test_adapting_at_rate_zero_is_the_network_mixed_with_its_ngram_counting_as_it_reads(text, streams, monkeypatch):
    ids = np.array(text[200:] + [8, 8, 4, 5, 8, 8, 6, 4, 8, 7, 7, 5] * 20)  # a new phrase, again and again
    model = small_model(V)
    m = fit_mixture(model, np.array(text[:200]), V, 0, 4)
    assert m.reading is not None and m.reading.shape == m.weights.shape
    batches = lambda w: eval_windows(Stream(ids, [(0, len(ids))]), w, streams, 0)  # noqa: E731
    monkeypatch.setattr(evaluation, "READ_AHEAD", 50)  # several calls of the reader, each several batches
    linear = Mixture(m.ngram, m.weights, m.reading)  # reading mixes as this does: no last layer
    static, adapted = evaluate_mixed(model, linear, batches(16)), adapt(model, batches(16), lr=0.0, mixture=m)
    p_net, top, ctx, y = network_predictions(model, batches(16), 4)  # batch by batch, a batch's rows in turn
    by_hand = m.mix(p_net, top, ngram.Reader(m.ngram).read(ctx, y), reading=True)
    assert adapted.loss == pytest.approx(float(-np.log(by_hand).mean()), rel=1e-6)
    assert adapted.network_loss == pytest.approx(static.network_loss, rel=1e-5)
    assert adapted.loss < static.loss - 0.3  # counting the phrase as it reads it pays


def _vocab() -> Vocab:
    return Vocab.build("abcdefghijklmnopqrstuvwxyz"[: V - 4])


def test_a_model_file_keeps_its_ngram_and_refuses_a_damaged_one(tmp_path, text):
    vocab = _vocab()
    assert len(vocab) == V
    model = small_model(V)
    m = fit_mixture(model, np.array(text), V, vocab.pad_id, 3, held=len(text) // 10)
    path = checkpoint.save(tmp_path / "m.safetensors", model, vocab, records=False, mixture=m)
    ck = checkpoint.load(path)
    assert ck.mixture is not None and ck.mixture.ngram.order == 3
    assert np.array_equal(ck.mixture.ngram.ids, np.array(text)) and np.allclose(ck.mixture.weights, m.weights)
    assert np.allclose(ck.mixture.reading, m.reading) and np.allclose(ck.mixture.exponents, m.exponents)
    assert m.exponents.shape == (4, ngram.EXPONENTS) and not np.allclose(m.exponents, ngram.LINEAR)
    older = {k: v for k, v in checkpoint._mixture_tensors(m).items() if k not in ("ngram.reading", "ngram.exponents")}
    p = tmp_path / "older.safetensors"  # a file from before the weights for reading: reading mixes with `weights`
    p.write_bytes(checkpoint.encode(model, vocab, records=False, extra_tensors=older,
                                    extra_meta={"ngram": {"order": 3, "beta": 4.0}}))
    assert checkpoint.load(p).mixture.reading is None
    rng = np.random.default_rng(5)  # a file from before followers were told apart: one weight for any number
    earlier = {"ngram.ids": older["ngram.ids"], "ngram.weights": torch.from_numpy(
        rng.uniform(0, 1, (4, *ngram.EARLIER_SHAPE)).astype(np.float32)), "ngram.reading": torch.from_numpy(
        rng.uniform(0, 1, (4, *ngram.EARLIER_SHAPE)).astype(np.float32))}
    p = tmp_path / "earlier.safetensors"
    p.write_bytes(checkpoint.encode(model, vocab, records=False, extra_tensors=earlier,
                                    extra_meta={"ngram": {"order": 3, "beta": 4.0}}))
    loaded = checkpoint.load(p).mixture
    assert loaded.weights.shape == loaded.reading.shape == (4, *SHAPE)
    ctx, y = contexts(np.array(text)[None, :-1], None, 3)[0], np.array(text[1:])
    p_net, top = rng.uniform(0.1, 0.5, len(y)), rng.uniform(0.5, 1, len(y))
    p_ng, longest, count, followers = loaded.ngram.probs(ctx, y[:, None])
    steps = np.minimum(np.ceil(np.log2(np.maximum(followers, 1))), ngram.FOLLOWERS - 1)
    assert len(np.unique(steps)) > 1  # contexts in different followers' steps take the same weight
    counted = np.minimum(np.log2(count + 1.0).astype(int), ngram.BUCKETS - 1)
    sure = np.minimum((top * ngram.CONFIDENCE).astype(int), ngram.CONFIDENCE - 1)
    for name in ("weights", "reading"):
        flat = earlier[f"ngram.{name}"].double().numpy().reshape(4 * ngram.BUCKETS, -1)
        w = flat[longest * ngram.BUCKETS + counted, sure]  # how the earlier file's weights were looked up
        got = loaded.mix(p_net, top, (p_ng[:, 0], longest, count, followers), reading=name == "reading")
        assert np.allclose(got, w * p_net + (1 - w) * p_ng[:, 0], rtol=1e-6)
    ctx = np.array(text[:30]).reshape(10, 3)
    assert np.allclose(ck.mixture.ngram.probs(ctx)[0], m.ngram.probs(ctx)[0])
    assert checkpoint.load(checkpoint.save(tmp_path / "plain.safetensors", model, vocab, records=False)).mixture is None

    bad = {"ids out of the vocabulary": {"ngram.ids": torch.full((5,), V, dtype=torch.uint8)},
           "weights above 1": {"ngram.weights": torch.full((4, *SHAPE), 1.5)},
           "weights of the wrong shape": {"ngram.weights": torch.zeros(3, *SHAPE)},
           "weights of a shape never written": {"ngram.weights": torch.zeros(4, SHAPE[0])},
           "reading weights of another shape than the weights": {
               "ngram.reading": torch.full((4, *ngram.EARLIER_SHAPE), 0.5)},
           "ids as floats": {"ngram.ids": torch.zeros(5)},
           "reading weights NaN": {"ngram.reading": torch.full((4, *SHAPE), float("nan"))},
           "reading weights of the wrong shape": {"ngram.reading": torch.zeros(4, SHAPE[0])},
           "powers NaN": {"ngram.exponents": torch.full((4, ngram.EXPONENTS), float("nan"))},
           "powers below 0": {"ngram.exponents": torch.full((4, ngram.EXPONENTS), -0.5)},
           "powers past the largest": {"ngram.exponents": torch.full((4, ngram.EXPONENTS), 1e6)},
           "powers of the wrong shape": {"ngram.exponents": torch.ones(3, ngram.EXPONENTS)},
           "powers as doubles": {"ngram.exponents": torch.ones(4, ngram.EXPONENTS, dtype=torch.float64)},
           "an n-gram tensor of no known name": {"ngram.counts": torch.zeros(4)}}
    for name, tensors in bad.items():
        extra = {**checkpoint._mixture_tensors(m), **tensors}
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(checkpoint.encode(model, vocab, records=False, extra_tensors=extra,
                                        extra_meta={"ngram": {"order": 3, "beta": 4.0}}))
        with pytest.raises(CharloomError, match=r"ngram|n-gram") as e:
            checkpoint.load(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value), name
    for spec in ({"order": 0, "beta": 4.0}, {"order": 17, "beta": 4.0}, {"order": 3, "beta": -1}, {"order": 3}):
        p = tmp_path / "spec.safetensors"
        p.write_bytes(checkpoint.encode(model, vocab, records=False, extra_tensors=checkpoint._mixture_tensors(m),
                                        extra_meta={"ngram": spec}))
        with pytest.raises(CharloomError, match=r"ngram|n-gram"):
            checkpoint.load(p)
    p = tmp_path / "half.safetensors"  # the field without its tensors
    p.write_bytes(checkpoint.encode(model, vocab, records=False, extra_meta={"ngram": {"order": 3, "beta": 4.0}}))
    with pytest.raises(CharloomError, match="n-gram"):
        checkpoint.load(p)


def test_a_model_file_from_before_the_last_layer_mixes_linearly(tmp_path, text):
    vocab, model = _vocab(), small_model(V)
    m = fit_mixture(model, np.array(text), V, vocab.pad_id, 3, held=len(text) // 10)
    p = tmp_path / "linear.safetensors"
    p.write_bytes(checkpoint.encode(model, vocab, records=False, extra_tensors={
        k: v for k, v in checkpoint._mixture_tensors(m).items() if k != "ngram.exponents"},
        extra_meta={"ngram": {"order": 3, "beta": 4.0}}))
    linear = checkpoint.load(p).mixture
    logits, ctx = np.random.default_rng(1).normal(size=(5, V)), np.array(text[:15]).reshape(5, 3)
    by_powers = Mixture(m.ngram, m.weights, m.reading, np.tile(ngram.LINEAR, (4, 1))).log_probs(logits, ctx)
    assert linear.exponents is None and np.allclose(linear.log_probs(logits, ctx), by_powers, atol=1e-6)
    assert not np.allclose(m.log_probs(logits, ctx), by_powers, atol=1e-3)  # the file's own layer moves them


@pytest.mark.kernel
@pytest.mark.parametrize("source", ["text", "names"])
def test_training_ends_with_the_ngram_in_the_model_file(tmp_path, text_file, tiny, source):
    src = str(text_file) if source == "text" else "names"
    out = tmp_path / "run"
    charloom.train(source=src, out=str(out), max_steps=20, ngram=4, **tiny, fit_chars=100)
    ck = checkpoint.load(out)
    g = ck.info["ngram"]
    # a text leaves the start of its training split out for the mixture, records some whole ones: fitted on text
    # the network has not learned, it gains its last layer; with none left out it would have none
    assert ck.mixture.exponents is not None
    assert ck.mixture is not None and 1 <= ck.mixture.ngram.order == g["order"] <= 4 and g["longest_asked"] == 4
    assert ck.mixture.weights.shape == (g["order"] + 1, *ngram.SHAPE) == ck.mixture.reading.shape
    assert g["val_bpc"] < g["network_val_bpc"]  # a 20-step network: the n-gram's counts help it
    # the same network on the same split: the run scored it in its precision (bf16 where it runs), the mixing in fp32
    assert g["network_val_bpc"] == pytest.approx(ck.info["full_val_bpc"], rel=1e-3)
    report = describe(out, samples=0)  # the run's report tells the n-gram, beside the run's end
    assert report["ngram"] == g and any(line.startswith("n-gram") for line in lines(report))
    if source == "names":  # records: each wrapped in <bos> ... <eos>, as training reads them
        assert ck.mixture.ngram.ids[0] == ck.vocab.bos_id and ck.vocab.eos_id in ck.mixture.ngram.ids
    gen = Generator.from_checkpoint(ck)
    a = gen.generate("", 40, n=2, seed=3)
    assert a == gen.generate("", 40, n=2, seed=3)
    plain = Generator(ck.model, ck.vocab, records=ck.records)
    assert gen.generate("", 40, n=2, seed=3, ngram=False) == plain.generate("", 40, n=2, seed=3)
    charloom.train(source=src, out=str(tmp_path / "none"), max_steps=5, ngram=0, **tiny)
    assert checkpoint.load(tmp_path / "none").mixture is None
