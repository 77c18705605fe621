import numpy as np
import pytest
import torch

from charloom.batching import (
    SPLIT_BLOCK, Batch, RecordBatches, Stream, StreamBatches, pad_records, padding_fraction, prepare,
    split_records, split_stream,
)
from charloom.config import BatchConfig, CorpusConfig
from charloom.corpus import Corpus, load
from charloom.errors import CharloomError
from charloom.vocab import Vocab


def stream_corpus(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    text = "".join(rng.choice(list("abcdefghij \n"), n))
    v = Vocab.build(text)
    return Corpus("toy", v, v.encode_array(text).astype(np.uint8), None)


def records_corpus(texts):
    v = Vocab.build(texts)
    ids = np.concatenate([v.encode_array(t) for t in texts]).astype(np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in texts])]).astype(np.int64)
    return Corpus("recs", v, ids, offsets)


@pytest.mark.parametrize("order", ["shuffle", "contiguous"])
def test_targets_are_inputs_shifted_by_one(order):
    c = stream_corpus()
    data = prepare(c, BatchConfig(batch_size=4, seq_len=16, order=order, val_fraction=0.1))
    it = iter(data.train)
    for _ in range(20):
        b = next(it)
        assert b.x.shape == b.y.shape == (4, 16) and b.x.dtype == torch.int64
        assert torch.equal(b.x[:, 1:], b.y[:, :-1])
        # every row is a real slice of the corpus: x then the one id after its window
        for row_x, row_y in zip(b.x, b.y):
            full = torch.cat([row_x, row_y[-1:]]).numpy()
            s = np.flatnonzero([np.array_equal(c.ids[i:i + 17], full) for i in range(len(c.ids) - 16)])
            assert len(s) >= 1


def test_shuffle_epoch_is_equal_size_non_overlapping_and_reproducible():
    c = stream_corpus(4000)
    cfg = BatchConfig(batch_size=8, seq_len=10, val_fraction=0.0, seed=3)
    sb = StreamBatches(Stream(c.ids, [(0, len(c.ids))]), cfg, 0)
    starts = sb._epoch_windows(0)
    n = sb.batches_in_epoch(0)
    assert n == (len(starts)) // 8
    # windows tile the stream at stride T from one offset, each exactly once, in shuffled order
    used = np.sort(starts)
    assert np.all(np.diff(used) == 10)
    assert not np.array_equal(starts, used)
    first = [sb.batch(0, i).x for i in range(n)]
    again = StreamBatches(Stream(c.ids, [(0, len(c.ids))]), cfg, 0)
    assert all(torch.equal(a, again.batch(0, i).x) for i, a in enumerate(first))
    assert not torch.equal(sb.batch(1, 0).x, first[0])  # a new epoch, a new order


@pytest.mark.parametrize("world", [1, 2])
def test_a_split_of_barely_one_batch_has_a_batch_every_epoch(world):
    c = stream_corpus(8 * 10 * world + 1)  # exactly one batch of windows at offset 0
    cfg = BatchConfig(batch_size=8, seq_len=10, val_fraction=0.0, seed=3)
    sb = StreamBatches(Stream(c.ids, [(0, len(c.ids))]), cfg, 0, world=world)
    assert [sb.batches_in_epoch(e) for e in range(20)] == [1] * 20  # a later cut would leave no whole batch
    assert len({tuple(sb.batch(e, 0).x[0].tolist()) for e in range(20)}) > 1  # shuffled still


def test_iterate_from_a_position_resumes_the_same_batches():
    c = stream_corpus(3000)
    sb = prepare(c, BatchConfig(batch_size=4, seq_len=20, val_fraction=0.0)).train
    per_epoch = sb.batches_in_epoch(0)
    straight = [b for _, b in zip(range(per_epoch + 5), sb.iterate())]
    resumed = [b for _, b in zip(range(5), sb.iterate(epoch=straight[per_epoch].epoch, index=0))]
    for a, b in zip(straight[per_epoch:], resumed):
        assert torch.equal(a.x, b.x) and (a.epoch, a.index) == (b.epoch, b.index)
    mid = next(sb.iterate(0, 3))
    assert torch.equal(mid.x, straight[3].x)


def test_contiguous_streams_continue_exactly_across_batches():
    c = stream_corpus(5000)
    cfg = BatchConfig(batch_size=5, seq_len=12, order="contiguous", val_fraction=0.0)
    sb = prepare(c, cfg).train
    batches = [b for _, b in zip(range(sb.batches_in_epoch() + 1), sb.iterate())]
    per_row = (len(c.ids) - 1) // 5
    for i in range(sb.batches_in_epoch() - 1):
        a, b = batches[i], batches[i + 1]
        assert b.continues and torch.equal(b.x[:, 0], a.y[:, -1])
    # row r of the epoch, read batch after batch, is exactly the r-th stretch of the corpus
    for r in range(5):
        row = torch.cat([b.x[r] for b in batches[:sb.batches_in_epoch()]]).numpy()
        assert np.array_equal(row, c.ids[r * per_row:r * per_row + len(row)])
    assert not batches[0].continues and not batches[sb.batches_in_epoch()].continues  # new epoch: reset state


def test_tail_split_holds_out_the_end():
    train, val = split_stream(1000, BatchConfig(val_fraction=0.1, split="tail"))
    assert train == [(0, 900)] and val == [(900, 1000)]


def test_random_split_is_seeded_disjoint_and_covering():
    n = SPLIT_BLOCK * 20 + 123
    cfg = BatchConfig(val_fraction=0.2, split="random", seed=7)
    train, val = split_stream(n, cfg)
    assert split_stream(n, cfg) == (train, val)
    assert split_stream(n, cfg.replace(seed=8)) != (train, val)
    cover = np.zeros(n, dtype=int)
    for s, e in train + val:
        cover[s:e] += 1
    assert np.all(cover == 1)
    assert sum(e - s for s, e in val) == 4 * SPLIT_BLOCK


def test_stream_gather_across_segments():
    ids = np.arange(100, dtype=np.int64)
    s = Stream(ids, [(0, 10), (50, 60), (90, 100)])
    assert len(s) == 30
    assert s.gather(np.array([0, 9, 10, 19, 20, 29])).tolist() == [0, 9, 50, 59, 90, 99]


def test_eval_windows_cover_the_validation_split_once():
    c = stream_corpus(3000)
    data = prepare(c, BatchConfig(batch_size=4, seq_len=16, val_fraction=0.2))
    seen = 0
    for b in data.val_batches():
        assert torch.equal(b.x[:, 1:], b.y[:, :-1])
        seen += b.tokens
    assert seen == len(data.val) - 1  # every character after the first, once, the last stream padded


def test_too_short_corpus_is_a_clear_error():
    c = stream_corpus(50)
    with pytest.raises(CharloomError, match=r"toy: the training split has 45 characters, fewer than seq_len \+ 1 = 129"):
        prepare(c, BatchConfig(seq_len=128, val_fraction=0.1))
    with pytest.raises(CharloomError, match="holds 9 windows of 100 characters, fewer than one batch of 64"):
        prepare(stream_corpus(1000), BatchConfig(batch_size=64, seq_len=100, val_fraction=0.0))


def test_record_batches_start_with_bos_end_with_eos_and_mask_padding():
    texts = ["ab", "abcde", "a", "bcd", "dddddd", "ce"]
    c = records_corpus(texts)
    v = c.vocab
    rb = RecordBatches(c, np.arange(len(texts)), BatchConfig(batch_size=3, bucket=False), "recs")
    got = []
    for i in range(rb.batches_in_epoch()):
        b = rb.batch(0, i)
        assert torch.equal(b.x[:, 1:][b.mask[:, :-1]], b.y[:, :-1][b.mask[:, :-1]])
        for x, y, m in zip(b.x, b.y, b.mask):
            assert x[0] == v.bos_id
            n = int(m.sum())
            assert y[n - 1] == v.eos_id  # the last real target ends the record
            assert torch.all(y[n:] == v.pad_id) and torch.all(m[:n])  # all padding masked, nothing else
            got.append(v.decode(y[:n]))
    assert sorted(got) == sorted(texts)


def test_pad_records_matches_a_python_loop():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 20, 200)
    starts = np.array([0, 10, 50, 120])
    lengths = np.array([3, 0, 12, 7])
    out = pad_records(ids, starts, lengths, 1, 2, 0).numpy()
    for r, (s, n) in enumerate(zip(starts, lengths)):
        row = [1, *ids[s:s + n], 2]
        assert out[r].tolist() == row + [0] * (out.shape[1] - len(row))


def test_overlong_records_are_cut_or_skipped_and_counted():
    c = records_corpus(["short", "x" * 40, "mid-size"])
    cut = RecordBatches(c, np.arange(3), BatchConfig(batch_size=3, max_record_len=10, overlong="cut"), "r")
    assert cut.overlong == 1 and len(cut.indices) == 3
    b = cut.batch(0, 0)
    assert b.x.shape[1] == 11  # <bos> + 10 kept characters
    cut_rows = [r for r in range(3) if int(b.mask[r].sum()) == 10]
    assert len(cut_rows) == 1 and c.vocab.eos_id not in b.y[cut_rows[0]].tolist()  # a cut record has no end
    skip = RecordBatches(c, np.arange(3), BatchConfig(batch_size=2, max_record_len=10, overlong="skip"), "r")
    assert skip.overlong == 1 and len(skip.indices) == 2
    assert max(skip.lengths) == 8


def test_bucketing_reduces_padding():
    rng = np.random.default_rng(1)
    texts = ["x" * int(n) for n in rng.integers(1, 140, 3000)]  # tweet-like lengths
    c = records_corpus(texts)
    idx = np.arange(len(texts))
    plain = RecordBatches(c, idx, BatchConfig(batch_size=32, bucket=False), "r")
    bucketed = RecordBatches(c, idx, BatchConfig(batch_size=32, bucket=True), "r")
    pad_plain = padding_fraction([plain.batch(0, i) for i in range(plain.batches_in_epoch())])
    pad_bucket = padding_fraction([bucketed.batch(0, i) for i in range(bucketed.batches_in_epoch())])
    assert pad_plain > 0.4 and pad_bucket < 0.05
    lens = [int(bucketed.batch(0, i).x.shape[1]) for i in range(10)]
    assert len(set(lens)) > 1  # batches of different lengths come in shuffled order


def test_record_split_is_seeded_and_disjoint():
    cfg = BatchConfig(val_fraction=0.25, split="random", seed=5)
    tr, va = split_records(100, cfg)
    assert len(va) == 25 and not set(tr) & set(va) and len(set(tr) | set(va)) == 100
    tr2, va2 = split_records(100, cfg)
    assert np.array_equal(va, va2)
    assert split_records(100, BatchConfig(val_fraction=0.25, split="tail"))[1].tolist() == list(range(75, 100))


def test_prepare_on_bundled_names_is_records():
    data = prepare(load(CorpusConfig(source="names")), BatchConfig(batch_size=16))
    assert isinstance(data.train, RecordBatches)
    assert data.train_size + data.val_size == 5163
    b = next(iter(data.train))
    assert b.x.shape[0] == 16 and torch.all(b.x[:, 0] == data.corpus.vocab.bos_id)
    assert sum(vb.tokens for vb in data.val_batches()) == sum(
        len(data.corpus.record(i)) + 1 for i in data.val.indices)


def test_batches_of_bundled_shakespeare():
    data = prepare(load(CorpusConfig(source="shakespeare")), BatchConfig(batch_size=32, seq_len=100))
    b = next(iter(data.train))
    assert b.x.shape == (32, 100) and torch.equal(b.x[:, 1:], b.y[:, :-1])
    assert data.val_size == round(5057239 * 0.05)


@pytest.mark.parametrize("order", ["shuffle", "contiguous"])
def test_processes_get_disjoint_shares_of_each_epoch(order):
    c = stream_corpus(6000)
    cfg = BatchConfig(batch_size=4, seq_len=10, order=order, val_fraction=0.0)
    shards = [prepare(c, cfg, rank=r, world=3).train for r in range(3)]
    n = shards[0].batches_in_epoch(0)
    assert n > 0 and all(s.batches_in_epoch(0) == n for s in shards)
    rows = [tuple(row.tolist()) for s in shards for i in range(n) for row in s.batch(0, i).x]
    assert len(rows) == len(set(rows)) == 3 * n * 4  # no window is read by two processes
    if order == "contiguous":  # each process's rows still continue from batch to batch
        for s in shards:
            assert torch.equal(s.batch(0, 1).x[:, 0], s.batch(0, 0).y[:, -1])
    else:  # together they read exactly the windows one process would, in whole global batches
        single = prepare(c, cfg.replace(batch_size=12), rank=0, world=1).train
        one = {tuple(row.tolist()) for i in range(n) for row in single.batch(0, i).x}
        assert set(rows) == one


def test_record_shards_are_disjoint():
    texts = [f"rec{i}" + "x" * (i % 7) for i in range(100)]
    c = records_corpus(texts)
    cfg = BatchConfig(batch_size=8, val_fraction=0.0)
    got = []
    for r in range(2):
        rb = RecordBatches(c, np.arange(100), cfg, "r", rank=r, world=2)
        for i in range(rb.batches_in_epoch(0)):
            b = rb.batch(0, i)
            got += [c.vocab.decode(y[m]) for y, m in zip(b.y, b.mask)]
    assert len(got) == len(set(got)) == 96
    with pytest.raises(CharloomError, match="cannot be shared by 4 processes"):
        RecordBatches(c, np.arange(3), cfg, "r", rank=0, world=4)


@pytest.mark.parametrize("k", [1, 3, 4, 40])
@pytest.mark.parametrize("continues", [False, True])
def test_pieces_cut_a_batch_along_time_into_consecutive_parts(k, continues):
    x = torch.arange(2 * 16).reshape(2, 16)
    b = Batch(x, x + 1, pad_id=-1, epoch=2, index=7, continues=continues)
    parts = b.pieces(k)
    assert len(parts) == min(k, 16)
    assert torch.equal(torch.cat([p.x for p in parts], 1), b.x) and torch.equal(torch.cat([p.y for p in parts], 1), b.y)
    widths = [p.x.shape[1] for p in parts]
    assert max(widths) - min(widths) <= 1 and min(widths) >= 1
    assert [p.continues for p in parts] == [continues] + [True] * (len(parts) - 1)
    assert all((p.epoch, p.index, p.pad_id) == (2, 7, -1) for p in parts)


def test_the_mixtures_fit_text_is_cut_from_the_start_of_the_training_split_and_never_trained_on():
    """fit_chars: the first characters of the training split (at most a tenth), far from a tail split's validation
    text, go to `Data.fit`; no training window reads them (only they hold a "z" here), the validation split is
    unchanged, and `training_text` ends with them, where a mixture is fitted."""
    from charloom.batching import training_text

    text = "".join(chr(97 + (i * 7) % 25) for i in range(20_000))  # a to y; the last 1,000 are validation
    text = "z" * 1_500 + text[1_500:]
    v = Vocab.build(text)
    corpus = Corpus("t", v, v.encode_array(text).astype(np.uint8), None)
    whole = prepare(corpus, BatchConfig(batch_size=4, seq_len=16))
    cut = prepare(corpus, BatchConfig(batch_size=4, seq_len=16, fit_chars=1_500))
    assert whole.fit is None and cut.val.segments == whole.val.segments == [(19_000, 20_000)]
    assert cut.fit.segments == [(0, 1_500)] and cut.train.stream.segments == [(1_500, 19_000)]
    z = v.encode("z")[0]

    def epoch(batches):
        return [b for b, _ in zip(batches.iterate(), range(batches.batches_in_epoch(0)))]

    assert all(not (b.x == z).any() and not (b.y == z).any() for b in epoch(cut.train))
    assert any((b.y == z).any() for b in epoch(whole.train))
    assert np.array_equal(training_text(cut, 10**9)[0], np.r_[corpus.ids[1_500:19_000], corpus.ids[:1_500]])
    capped = prepare(corpus, BatchConfig(batch_size=4, seq_len=16, fit_chars=10**6))
    assert len(capped.fit) == len(whole.train.stream) // 10  # at most a tenth of the training split


def test_a_training_split_too_short_for_ten_batches_keeps_its_fit_text():
    """The cut never makes a corpus that trains too small to train: a split that would not hold ten batches after
    it keeps every character, so the size checks and their advice read as before."""
    corpus = stream_corpus(20_000)
    assert len(prepare(corpus, BatchConfig(batch_size=4, seq_len=16, fit_chars=1_000)).fit) == 1_000
    small = prepare(corpus, BatchConfig(batch_size=16, seq_len=128, fit_chars=1_000))  # 10 batches: 20,640
    assert small.fit is None and small.train_size == len(prepare(corpus, BatchConfig(batch_size=16, seq_len=128)).train.stream)


@pytest.mark.parametrize("seq_len, val_fraction, advice", [
    (64, 0.05, "use a shorter --seq-len, a smaller --val-fraction, or more text"),
    (64, 0.0, "use a shorter --seq-len or more text"),
    (1, 0.0, "use more text"),
])
def test_a_split_shorter_than_a_window_advises_only_what_can_still_change(seq_len, val_fraction, advice):
    """A window of one character or no validation split cannot be made smaller: the advice leaves them out."""
    from charloom.batching import StreamBatches, Stream

    cfg = BatchConfig(batch_size=1, seq_len=seq_len, val_fraction=val_fraction)
    with pytest.raises(CharloomError, match=f"{advice}$"):
        StreamBatches(Stream(np.zeros(1, dtype=np.int64), [(0, 1)]), cfg, 0)


def test_records_left_out_for_the_mixtures_fit_are_whole_random_and_never_trained_on():
    """fit_chars on records: seeded random whole training records of about that many ids (each with its <bos> and
    <eos>), never in a training batch, the validation records unchanged; `training_text` ends with them and says
    how many of its ids they are."""
    from charloom.batching import training_text

    texts = [f"{chr(97 + i % 26) * (3 + i % 7)}" for i in range(2_000)]  # sorted runs, as a names file may be
    corpus = records_corpus(texts)
    whole = prepare(corpus, BatchConfig(batch_size=4, seq_len=16))
    cut = prepare(corpus, BatchConfig(batch_size=4, seq_len=16, fit_chars=1_000))
    assert whole.fit_records is None and np.array_equal(whole.val.indices, cut.val.indices)
    fit, kept = cut.fit_records, cut.train.indices
    assert not np.intersect1d(fit, kept).size and np.array_equal(np.union1d(fit, kept), whole.train.indices)
    ids = (np.diff(corpus.offsets)[fit] + 2).sum()
    assert 1_000 <= ids < 1_000 + 2 + 9 and cut.fit_size == len(fit)  # the fewest whole records that reach it
    assert np.ptp(fit) > len(whole.train.indices) // 2  # spread over the file, not its first (sorted) records
    text, held = training_text(cut, 10**9)
    assert held == ids and len(text) == (np.diff(corpus.offsets)[whole.train.indices] + 2).sum()
    v = corpus.vocab
    assert text[-held:].tolist() == [t for i in fit for t in (v.bos_id, *corpus.ids[corpus.offsets[i]:
                                                                                  corpus.offsets[i + 1]], v.eos_id)]
    assert training_text(whole, 10**9)[1] is None
    capped = prepare(corpus, BatchConfig(batch_size=4, seq_len=16, fit_chars=10**6))  # at most a tenth
    read = (np.diff(corpus.offsets)[whole.train.indices] + 2).sum()
    assert read // 10 <= (np.diff(corpus.offsets)[capped.fit_records] + 2).sum() < read // 10 + 2 + 9


def test_records_training_skips_are_never_left_out_for_the_fit_nor_counted():
    """With --overlong skip, a record training never reads is neither a fit record nor counted towards the cut:
    the cut is of text training would have read, and can never leave training nothing."""
    texts = ["ab", "cd"] + ["x" * 101] * 10
    corpus = records_corpus(texts)
    cfg = dict(batch_size=1, seq_len=1, val_fraction=0, max_record_len=5, overlong="skip")
    for seed in range(40):
        data = prepare(corpus, BatchConfig(**cfg, fit_chars=10**6, seed=seed))
        assert data.fit_records is None and data.train.indices.tolist() == [0, 1]  # two records: no cut of one
    many = records_corpus(["ab"] * 300 + ["x" * 101] * 300)
    data = prepare(many, BatchConfig(**cfg, fit_chars=40, seed=0))
    assert (data.fit_records < 300).all() and len(data.fit_records) == 10  # 10 x (2 + 2) reaches 40
