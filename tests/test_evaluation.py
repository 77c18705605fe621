import math

import numpy as np
import pytest
import torch

from charloom import CorpusConfig, EvalConfig, load_corpus
from charloom.batching import Batch
from charloom.config import ModelConfig
from charloom.errors import CharloomError, ConfigError
from charloom.evaluation import corpus_batches, evaluate, score
from charloom.model import CharRNN

pytestmark = pytest.mark.kernel
V = 11


def make(cell="lstm", layers=1, hidden=8, vocab=V, seed=0):
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(cell=cell, num_layers=layers, hidden_size=hidden, embedding=4, vocab_size=vocab)).eval()


def bits_of_one_call(model, ids: list[int]) -> tuple[float, int]:
    """The reference: the whole sequence in one forward call, -log2 p of each next id, summed."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = model(x[:, :-1])[0].log_softmax(-1).gather(-1, x[:, 1:, None])
    return float(-logp.sum() / math.log(2)), len(ids) - 1


def test_bpc_is_mean_negative_log2_probability():
    model = make("lstm", layers=1)
    ids = torch.randint(4, V, (1, 50))
    batch = Batch(ids[:, :-1], ids[:, 1:], pad_id=0)
    result = evaluate(model, [batch])
    with torch.no_grad():
        logp = model(ids[:, :-1])[0].log_softmax(-1).gather(-1, ids[:, 1:, None])
    expected_bits = float(-(logp / math.log(2)).mean())
    assert result.characters == 49
    assert result.bpc == pytest.approx(expected_bits, rel=1e-6)
    assert result.bpc == pytest.approx(result.loss / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(result.loss))


@pytest.mark.parametrize("window", [7, 64, 4096])
def test_a_text_scored_in_windows_equals_one_call_over_the_whole(tmp_path, window):
    text = "the quick brown fox jumps over the lazy dog.\n" * 9
    (tmp_path / "t.txt").write_text(text)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    model = make(vocab=len(corpus.vocab))
    bits, n = bits_of_one_call(model, corpus.ids.tolist())
    result = score(model, corpus, EvalConfig(window=window))
    assert result.characters == n == len(text) - 1
    assert result.bpc == pytest.approx(bits / n, rel=1e-5)


def test_records_are_scored_each_from_bos_through_eos(tmp_path):
    names = ["anna", "bob", "christina", "di"]
    (tmp_path / "n.txt").write_text("\n".join(names) + "\n")
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "n.txt"), records=True))
    v = corpus.vocab
    model = make("gru", vocab=len(v))
    total, count = 0.0, 0
    for name in names:  # each record alone, with its own fresh state
        b, n = bits_of_one_call(model, [v.bos_id, *v.encode(name), v.eos_id])
        total, count = total + b, count + n
    result = score(model, corpus, EvalConfig(streams=3))  # padded batches of several records
    assert result.characters == count == sum(len(n) + 1 for n in names)
    assert result.bpc == pytest.approx(total / count, rel=1e-5)


def test_several_streams_score_every_character_once(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    (tmp_path / "t.txt").write_text(text)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    batches = list(corpus_batches(corpus, streams=4, window=50))
    assert sum(b.tokens for b in batches) == len(text) - 1
    targets = np.sort(np.concatenate([b.y[b.mask].numpy() for b in batches]))
    assert np.array_equal(targets, np.sort(corpus.ids[1:]))


def test_max_characters_stops_early_and_an_empty_text_is_a_clear_error():
    model = make()
    ids = torch.randint(4, V, (2, 10))
    batches = [Batch(ids[:, :-1], ids[:, 1:], pad_id=0)] * 5
    assert evaluate(model, batches, max_characters=20).characters == 36  # two batches of 18

    with pytest.raises(CharloomError, match="nothing to evaluate"):
        evaluate(model, [])


def test_evaluation_leaves_the_model_in_training_mode_and_without_gradients():
    model = make().train()
    ids = torch.randint(4, V, (1, 20))
    evaluate(model, [Batch(ids[:, :-1], ids[:, 1:], pad_id=0)])
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.bf16
def test_bf16_evaluation_stays_close_to_fp32():
    model = make(hidden=32)
    ids = torch.randint(4, V, (4, 65), generator=torch.Generator().manual_seed(0))  # not tied to the weights drawn
    batches = [Batch(ids[:, :-1], ids[:, 1:], pad_id=0)]
    exact, fast = evaluate(model, batches), evaluate(model, batches, precision="bf16")
    assert fast.characters == exact.characters and fast.loss == pytest.approx(exact.loss, abs=0.01)
    assert fast.loss != exact.loss  # it did run in bf16


def reference_adapt(model, ids: list[int], segment: int, lr: float, decay: float) -> tuple[float, int]:
    """Dynamic evaluation by hand: a copy of the model scores each segment, then one plain SGD step on its mean
    loss (gradient norm clipped to 1), a `decay` pull back to the trained weights, state carried (detached)."""
    import copy

    work = copy.deepcopy(model)
    trained = {k: v.clone() for k, v in work.state_dict().items()}
    bits, count, state = 0.0, 0, None
    for s in range(0, len(ids) - 1, segment):
        x = torch.tensor([ids[s:s + segment + 1]])
        logits, new_state = work(x[:, :-1], state)
        logp = logits.log_softmax(-1).gather(-1, x[:, 1:, None])
        bits, count = bits + float(-logp.sum().detach()) / math.log(2), count + x.shape[1] - 1
        work.zero_grad()
        (-logp.mean()).backward()
        torch.nn.utils.clip_grad_norm_(work.parameters(), 1.0)
        with torch.no_grad():
            for name, p in work.named_parameters():
                p -= lr * p.grad
                p += decay * (trained[name] - p)
        state = tuple(t.detach() for t in new_state)
    return bits, count


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_dynamic_evaluation_equals_a_hand_written_loop_and_leaves_the_model_alone(tmp_path, decay):
    from charloom.evaluation import score_adapted

    text = "the quick brown fox jumps over the lazy dog.\n" * 6
    (tmp_path / "t.txt").write_text(text)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    model = make(vocab=len(corpus.vocab))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bits, n = reference_adapt(model, corpus.ids.tolist(), 16, 0.5, decay)
    result = score_adapted(model, corpus, EvalConfig(adapt=True, adapt_lr=0.5, adapt_segment=16, adapt_decay=decay))
    assert result.characters == n == len(text) - 1
    assert result.bpc == pytest.approx(bits / n, rel=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model file never changes
    assert result.bpc < score(model, corpus).bpc  # a repetitive text: reading it teaches the model
    streams = EvalConfig(adapt=True, adapt_lr=0.5, adapt_segment=16, adapt_decay=decay, streams=4)
    assert score_adapted(model, corpus, streams).loss == result.loss  # a text adapts as one stream, in order


@pytest.mark.parametrize("adapt", [False, True])
def test_a_text_of_one_character_is_refused_naming_it(tmp_path, adapt):
    from charloom.evaluation import score_adapted

    (tmp_path / "one.txt").write_text("a")
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "one.txt"), cache_dir=str(tmp_path / "cache")))
    model = make(vocab=len(corpus.vocab))
    with pytest.raises(CharloomError, match=r"^.*one\.txt: nothing to evaluate: the text has fewer than two"):
        score_adapted(model, corpus, EvalConfig(adapt=True)) if adapt else score(model, corpus)


def test_an_adapted_segment_too_large_for_memory_is_refused_naming_the_option(tmp_path, monkeypatch):
    """A segment is learned in one step, so it cannot be read in pieces: past half the machine's memory (here made
    small) it is refused before any work; one that fits is scored, and so is a text shorter than the segment asked,
    which is all one segment."""
    from charloom import evaluation
    from charloom.evaluation import score_adapted

    (tmp_path / "t.txt").write_text("abcabd" * 40)
    (tmp_path / "long.txt").write_text("abcabd" * 20_000)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    long = load_corpus(CorpusConfig(source=str(tmp_path / "long.txt")), vocab=corpus.vocab)
    model = make(vocab=len(corpus.vocab))
    monkeypatch.setattr(evaluation, "memory_cap", lambda: 4 * 10**6)
    with pytest.raises(ConfigError, match=r"^adapt_segment \(--adapt-segment\): segments of 100,000 characters need "
                                          r"about [\d.]+ GB"):
        score_adapted(model, long, EvalConfig(adapt=True, adapt_segment=100_000))
    assert score_adapted(model, corpus, EvalConfig(adapt=True, adapt_segment=10)).characters == 239
    assert score_adapted(model, corpus, EvalConfig(adapt=True, adapt_segment=100_000)).characters == 239


def test_streams_whose_attention_memory_would_not_fit_are_refused_naming_the_option(tmp_path, monkeypatch):
    """A stream's state is never cut in pieces: an attention head's memory (here 64 x 129 floats, three copies:
    about 99 kB a stream) past half the machine's memory (made small) is refused before any work, whether scored
    or adapted; as many as fit are scored."""
    from charloom import evaluation
    from charloom.evaluation import score_adapted

    (tmp_path / "t.txt").write_text("abcabd" * 40)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(corpus.vocab), hidden_size=8, attention=64, memory=64))
    one = evaluation.state_bytes(model.cfg)
    assert one > 3 * 64 * 129 * 4  # the memory's three copies, and the layer's own state
    monkeypatch.setattr(evaluation, "memory_cap", lambda: 4 * one)
    with pytest.raises(ConfigError, match=r"^streams \(--streams\): 8 streams of this model's state need about "
                                          r"[\d.]+ GB, .*; give fewer streams$"):
        score(model, corpus, EvalConfig(streams=8))
    assert score(model, corpus, EvalConfig(streams=4)).characters == 239
    monkeypatch.setattr(evaluation, "memory_cap", lambda: one // 2)
    for run in (lambda: score(model, corpus), lambda: score_adapted(model, corpus, EvalConfig(adapt=True))):
        with pytest.raises(ConfigError, match=r"^streams \(--streams\): one stream of this model's state needs .*"
                                              r"attention memory is too large for this machine$"):
            run()


def test_a_learning_rate_that_makes_the_adapting_network_diverge_is_refused_naming_it(tmp_path):
    """A figure of nan bits per character is no figure: a rate that throws the weights to inf stops the reading with
    a one-line error naming the option, where it read on to the end and printed nan."""
    from charloom.evaluation import score_adapted

    (tmp_path / "t.txt").write_text("abcabd" * 200)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    model = make(vocab=len(corpus.vocab))
    with pytest.raises(ConfigError, match=r"^adapt_lr \(--adapt-lr\): the network diverged while adapting at a "
                                          r"learning rate of 1e\+30 \(its loss was (nan|inf) by character [\d,]+\)"):
        score_adapted(model, corpus, EvalConfig(adapt=True, adapt_lr=1e30, adapt_segment=16))
    assert math.isfinite(score_adapted(model, corpus, EvalConfig(adapt=True, adapt_segment=16)).bpc)


def test_dynamic_evaluation_at_learning_rate_zero_is_the_static_score(tmp_path):
    from charloom.evaluation import score_adapted

    (tmp_path / "t.txt").write_text("abcabd" * 40)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt")))
    model = make(vocab=len(corpus.vocab))
    static = score(model, corpus, EvalConfig(window=10))
    adapted = score_adapted(model, corpus, EvalConfig(adapt=True, adapt_lr=0.0, adapt_segment=10))
    assert adapted.characters == static.characters and adapted.loss == pytest.approx(static.loss, rel=1e-6)


def read_lengths(model):
    """The positions (rows x time steps) of every forward call of `model`, as they happen."""
    seen = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].numel()))
    return seen


@pytest.mark.parametrize("streams, window, records", [(1, 4096, False), (3, 100, False), (2, 4096, True)])
def test_a_long_window_is_scored_in_pieces_with_the_same_figure(tmp_path, monkeypatch, streams, window, records):
    from charloom import evaluation
    from charloom.evaluation import evaluate_mixed, network_predictions
    from charloom.ngram import EXPONENTS, SHAPE, Mixture, NGram

    text = "the quick brown fox jumps over the lazy dog.\n" * 9
    (tmp_path / "t.txt").write_text(text)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt"), records=records))
    model = make(vocab=len(corpus.vocab))
    cfg = EvalConfig(window=window, streams=streams)
    whole = score(model, corpus, cfg)
    net = network_predictions(model, corpus_batches(corpus, streams, window), 3)
    seen = read_lengths(model)
    position = 4 * (evaluation.LOGIT_ROWS * len(corpus.vocab) + 4 + evaluation.GATE_ROWS * 8)  # embedding 4, H 8
    monkeypatch.setattr(evaluation, "PIECE_BYTES", 51 * position)  # 51 positions per call at most
    pieced = score(model, corpus, cfg)
    assert len(seen) > 5 and max(seen) <= 51
    assert pieced.characters == whole.characters and pieced.bpc == pytest.approx(whole.bpc, rel=1e-6)
    for a, b in zip(network_predictions(model, corpus_batches(corpus, streams, window), 3), net):  # same order too
        np.testing.assert_allclose(a, b, rtol=1e-5)
    if streams == 1 and not records:  # one stream: the whole text in one call is the reference
        bits, n = bits_of_one_call(model, corpus.ids.tolist())
        assert pieced.bpc == pytest.approx(bits / n, rel=1e-5)
    rng = np.random.default_rng(0)  # with an n-gram, linear and with its last layer: pieces carry its contexts too
    counts = NGram(corpus.ids[: len(corpus.ids) // 2], len(corpus.vocab), 3)
    for powers in (None, rng.uniform(0, 2, (4, EXPONENTS))):
        m = Mixture(counts, rng.uniform(0, 1, (4, *SHAPE)), None, powers)
        monkeypatch.setattr(evaluation, "PIECE_BYTES", 10**9)
        one = evaluate_mixed(model, m, corpus_batches(corpus, streams, window))
        monkeypatch.setattr(evaluation, "PIECE_BYTES", 51 * position)
        many = evaluate_mixed(model, m, corpus_batches(corpus, streams, window))
        assert many.characters == one.characters and many.bpc == pytest.approx(one.bpc, rel=1e-5)
        assert many.network_bpc == pytest.approx(whole.bpc, rel=1e-5) and abs(many.bpc - whole.bpc) > 0.01


def test_a_long_window_on_a_large_vocabulary_never_makes_all_its_logits():
    # 50,000 positions of a 20,000-character vocabulary: (1, T, V) float32 logits would be 4 GB
    from charloom import evaluation

    model = make(vocab=20_000)

    def bounded(_module, args):  # before the head computes, so a too large product is never allocated
        assert args[0].shape[1] * 20_000 * 4 <= evaluation.PIECE_BYTES, f"{tuple(args[0].shape)} into the head"

    model.head.register_forward_pre_hook(bounded)
    ids = torch.randint(4, 20_000, (1, 50_001))
    result = evaluate(model, [Batch(ids[:, :-1], ids[:, 1:], pad_id=0)])
    assert result.characters == 50_000 and math.isfinite(result.bpc)


@pytest.mark.parametrize("adapt", [False, True])
def test_a_corpus_encoded_with_another_vocabulary_is_refused_naming_it(tmp_path, adapt):
    """More characters than the model has ids would index past its rows; fewer would be read as other characters
    and give a figure that means nothing."""
    from charloom.evaluation import score_adapted

    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 9)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "cache")))
    for vocab in (len(corpus.vocab) - 3, len(corpus.vocab) + 3):
        with pytest.raises(CharloomError, match=rf"t\.txt: encoded with a vocabulary of {len(corpus.vocab)} ids, "
                                                rf"not the model's {vocab}; load it with the model's"):
            score_adapted(make(vocab=vocab), corpus, EvalConfig(adapt=True)) if adapt else score(make(vocab=vocab),
                                                                                                 corpus)


def test_a_device_that_is_not_here_is_refused_naming_it(tmp_path):
    """From Python as from the command line: a one-line error naming the argument, not torch's own, and for a
    model file before the file is read."""
    from charloom import checkpoint
    from charloom.sampling import Generator

    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 9)
    corpus = load_corpus(CorpusConfig(source=str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "cache")))
    model = make(vocab=len(corpus.vocab))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cases = [("bogus", r"^device: 'bogus' is not a device here"), ("meta", r"^device: 'meta' holds no numbers"),
             (f"cuda:{gpus}", rf"^device: 'cuda:{gpus}' is not here \({gpus} CUDA GPUs available\)"), (1.5, "^device")]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            score(model, corpus, device=bad)
        with pytest.raises(ConfigError, match=message):
            checkpoint.load(tmp_path / "no such file", device=bad)  # the device is refused first
        with pytest.raises(ConfigError, match=message):
            Generator(model, corpus.vocab, device=bad)
    with pytest.raises(ConfigError, match=rf"^device: 'cuda:{gpus}' is not here"):  # the config's is not ignored
        score(model, corpus, EvalConfig(device="cuda"), device=f"cuda:{gpus}")
    if not gpus:
        with pytest.raises(ConfigError, match=r"^device: 'cuda' is not here \(0 CUDA GPUs available\)"):
            score(model, corpus, EvalConfig(device="cuda"))
    # a device named another way than the model's place: scored there on a copy, the caller's model left alone
    weights = [p.clone() for p in model.parameters()]
    assert score(model, corpus, device="cpu:0").bpc == score(model, corpus).bpc == \
        score(model, corpus, EvalConfig(device="cpu")).bpc
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
