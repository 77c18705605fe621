"""Labelled records: a label read from a CSV column or JSONL field, given as a token after <bos>, chosen when
sampling, and measured in evaluation (is the label used?)."""

import csv
import json
import random

import numpy as np
import pytest
import torch

import charloom
from charloom import checkpoint
from charloom.batching import RecordBatches, prepare, split_records
from charloom.cli import main
from charloom.config import BatchConfig, CorpusConfig, ModelConfig
from charloom.corpus import load
from charloom.errors import CharloomError, ConfigError
from charloom.evaluation import label_scores
from charloom.model import CharRNN
from charloom.sampling import Generator
from charloom.vocab import Vocab

AG_MAP = "1=World,2=Sports,3=Business,4=Sci/Tech"
NAMES = ("World", "Sports", "Business", "Sci/Tech")
# four classes of headline, as in AG News, each with its own words and shape
WORDS = {
    1: (["UN", "EU", "Iraq", "Iran", "Sudan", "Kenya"], ["leaders meet over", "envoy warns on", "talks stall on"],
        ["border dispute", "peace deal", "refugee camps"]),
    2: (["Yankees", "Lakers", "Arsenal", "Eagles"], ["beat", "edge past", "crush"], ["in overtime", "at home"]),
    3: (["Oil", "Stocks", "Dollar", "IBM"], ["shares rise after", "profit falls on"], ["weak demand", "rate hike"]),
    4: (["NASA", "Microsoft", "Apple", "Nokia"], ["unveils new", "patches flaw in"], ["iPod", "space probe"]),
}


def headline(cls: int, r: random.Random) -> str:
    a, b, c = WORDS[cls]
    if cls == 2:
        return f"{r.choice(a)} {r.choice(b)} {r.choice(a)} {r.randint(1, 9)}-{r.randint(0, 9)} {r.choice(c)}"
    if cls == 3:
        return f"{r.choice(a)} {r.choice(b)} {r.choice(c)}, up {r.randint(1, 30)}%"
    return f"{r.choice(a)} {r.choice(b)} {r.choice(c)}"


def ag_rows(n: int, seed: int = 0) -> list[tuple[int, str]]:
    r = random.Random(seed)
    return [(cls, headline(cls, r)) for cls in (r.randint(1, 4) for _ in range(n))]


@pytest.fixture
def ag_csv(tmp_path):
    """An AG-News-shaped CSV without a header: class (1-4), title. (the file, its rows)"""
    rows = ag_rows(400)
    path = tmp_path / "ag.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path, rows


def ag_config(path, **changes) -> CorpusConfig:
    return CorpusConfig(**{"source": str(path), "records": True, "columns": ("1",), "label_column": "0",
                           "label_map": AG_MAP, **changes})


# ---- reading labels -------------------------------------------------------------------------------------
def test_labels_come_from_a_csv_column_through_the_map(ag_csv):
    path, rows = ag_csv
    c = load(ag_config(path))
    assert c.vocab.labels == NAMES  # the map's order
    assert [c.vocab.labels[i] for i in c.labels] == [NAMES[cls - 1] for cls, _ in rows]
    assert [c.record(i) for i in range(c.num_records)] == [text for _, text in rows]


def test_labels_come_from_a_jsonl_field_named_as_they_are(tmp_path):
    path = tmp_path / "tweets.jsonl"
    objs = [{"text": "so happy today", "meta": {"mood": "happy"}}, {"text": "rain again", "meta": {"mood": "sad"}},
            {"text": None, "meta": {"mood": "sad"}}, {"text": "sunshine!", "meta": {"mood": "happy"}}]
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    c = load(CorpusConfig(source=str(path), records=True, field="text", label_field="meta.mood"))
    assert c.vocab.labels == ("happy", "sad")  # no map: the values, sorted
    assert c.labels.tolist() == [0, 1, 0]  # the record without text is skipped with its label


def test_a_number_label_is_named_by_its_value_as_a_csv_file_would_name_it(tmp_path):
    """1, 1.0 and 1e0 in a JSONL label field are one star rating, not three labels; 1e3 is 1000."""
    path = tmp_path / "reviews.jsonl"
    stars = [1, 1.0, 1e0, 2, 2.5, 1e3, True, "1"]
    path.write_text("".join(json.dumps({"text": f"review {i}", "stars": v}) + "\n" for i, v in enumerate(stars)))
    c = load(CorpusConfig(source=str(path), records=True, field="text", label_field="stars",
                          cache_dir=str(tmp_path / "cache")))
    assert c.vocab.labels == ("1", "1000", "2", "2.5", "true")
    assert [c.vocab.labels[i] for i in c.labels] == ["1", "1", "1", "2", "2.5", "1000", "true", "1"]


def test_a_label_column_counted_from_the_end_is_checked_in_each_row_of_a_ragged_file(tmp_path):
    """-1 is another column in a row of three than in a row of two: the row where it is the text is named, and a
    first row of one column (where the two agree only there) is not the whole file's fault."""
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,hello there,pos\nawful,neg\n")
    with pytest.raises(CharloomError, match=r"^--label-column: '-1' names column 1 of .*ragged.csv \(line 2, 2 "
                                            r"columns\), which --column also chose"):
        load(CorpusConfig(source=str(path), records=True, columns=("1",), label_column="-1", header=False,
                          cache_dir=str(tmp_path / "cache")))
    path.write_text("a,b,hello there,pos\nc,d,awful,neg\n")
    c = load(CorpusConfig(source=str(path), records=True, columns=("1",), label_column="-1", header=False,
                          cache_dir=str(tmp_path / "cache")))
    assert c.vocab.labels == ("neg", "pos")


@pytest.mark.parametrize("columns, label", [(("label",), "1"), (("-1",), "label"), (("0",), "-2")])
def test_a_label_column_that_is_also_a_text_column_by_another_name_is_refused(tmp_path, columns, label):
    path = tmp_path / "news.csv"
    path.write_text("text,label\nhello there,world\ngoal scored,sport\n")
    with pytest.raises(CharloomError, match=rf"^--label-column: '{label}' names column \d of .*news.csv \(line \d, 2 "
                                            r"columns\), which --column also chose; the label is another column$"):
        load(CorpusConfig(source=str(path), records=True, columns=columns, label_column=label,
                          cache_dir=str(tmp_path / "cache")))


def test_a_value_outside_the_map_is_refused_naming_value_and_flag(ag_csv):
    path, _ = ag_csv
    with pytest.raises(CharloomError, match=r"--label-map: label value '4' is not in the map"):
        load(ag_config(path, label_map="1=World,2=Sports,3=Business"))


def test_a_model_whose_number_labels_were_named_2_0_still_reads_its_own_data(tmp_path):
    """Before labels were named by value, a JSON 2.0 was the label "2.0": a model holding such names reads the same
    file (now giving "2") as its own labels (as eval and a resume read it), and a map written with "2.0=ok" still
    maps."""
    path = tmp_path / "stars.jsonl"
    path.write_text("".join(json.dumps({"text": f"review {i}", "stars": float(i % 3 + 1)}) + "\n" for i in range(9)))
    cfg = CorpusConfig(source=str(path), records=True, field="text", label_field="stars",
                       cache_dir=str(tmp_path / "cache"))
    now = load(cfg)
    assert now.vocab.labels == ("1", "2", "3")
    old = Vocab(now.vocab.chars, labels=("1.0", "2.0", "3.0"))  # as a model trained before held them
    read = load(cfg, vocab=old)
    assert read.vocab == old and read.labels.tolist() == now.labels.tolist()
    assert old.label_id("2") == old.label_id("2.0")  # sample --label 2 for such a model
    assert Vocab(now.vocab.chars, labels=("-0.0", "1.0")).earlier_labels == {"0": "-0.0", "1": "1.0"}
    mapped = load(cfg.replace(label_map="1.0=bad,2.0=ok,3.0=good"))
    assert [mapped.vocab.labels[i] for i in mapped.labels[:3]] == ["bad", "ok", "good"]
    csv = tmp_path / "stars.csv"  # a CSV's values are its text, never named the JSON way: "2" is not "2.0"
    csv.write_text("good one,2.0\nfine,2\n")
    with pytest.raises(CharloomError, match=r"label value '2' is not in the map \(it maps '2.0'\)$"):
        load(CorpusConfig(source=str(csv), records=True, columns=("0",), label_column="1", label_map="2.0=ok",
                          cache_dir=str(tmp_path / "cache")))


def test_a_mapped_name_the_model_lacks_blames_the_map(ag_csv, tmp_path):
    """Reading with a model's vocabulary: the map gave the name, so the map is what to fix; without a map the
    label column's value is the name."""
    path, _ = ag_csv
    vocab = load(ag_config(path, cache_dir=str(tmp_path / "cache"))).vocab
    with pytest.raises(CharloomError, match=r"^--label-map: label 'Science' is not one of the model's"):
        load(ag_config(path, label_map="1=World,2=Sports,3=Business,4=Science", cache_dir=str(tmp_path / "cache")),
             vocab=vocab)
    with pytest.raises(CharloomError, match=r"^--label-column: label '4' is not one of the model's"):
        load(ag_config(path, label_map=None, cache_dir=str(tmp_path / "cache")), vocab=vocab)


def test_a_header_row_read_as_a_record_is_named_with_the_way_out(ag_csv, tmp_path):
    path, rows = ag_csv
    headed = tmp_path / "headed.csv"
    headed.write_text("Class Index,Title\n" + path.read_text())
    with pytest.raises(CharloomError, match=r"label value 'Class Index' is not in the map .*; if the file's first "
                                            r"row names its columns, give --header$"):
        load(ag_config(headed, cache_dir=str(tmp_path / "cache")))
    assert load(ag_config(headed, header=True, cache_dir=str(tmp_path / "cache"))).num_records == len(rows)
    with pytest.raises(CharloomError, match=r"label value '4' is not in the map \(it maps '1', '2', '3'\)$"):
        load(ag_config(path, label_map="1=World,2=Sports,3=Business"))  # not the first row's: no word of a header


def test_labels_belong_to_records_of_the_right_format(ag_csv, tmp_path):
    path, _ = ag_csv
    with pytest.raises(CharloomError, match="--label-column: labels belong to records"):
        load(CorpusConfig(source=str(path), columns=("1",), label_column="0"))
    with pytest.raises(CharloomError, match="--label-field: .* read as csv"):
        load(CorpusConfig(source=str(path), records=True, columns=("1",), label_field="mood"))
    with pytest.raises(ConfigError, match="label_map: only means something with --label-column"):
        CorpusConfig(source=str(path), label_map=AG_MAP)
    with pytest.raises(ConfigError, match=r"label_map \(--label-map\): 'World' is not RAW=NAME"):
        ag_config(path, label_map="World")


def test_records_with_an_empty_label_are_counted_and_the_map_can_name_them(ag_csv, tmp_path):
    """A CSV whose label cell is empty on some rows: the error counts them and says how to go on, and the empty
    value is one a label map can name."""
    _, rows = ag_csv
    path = tmp_path / "gaps.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("" if i % 50 == 0 else cls, text) for i, (cls, text) in enumerate(rows)])
    with pytest.raises(CharloomError, match=r"^--label-column: 8 of 400 records have an empty label; .*--label-map"):
        load(ag_config(path, label_map=None))
    named = load(ag_config(path, label_map="=Unlabelled," + AG_MAP))
    assert named.vocab.labels == ("Unlabelled", *NAMES)
    assert (named.labels == 0).sum() == 8


def test_the_cache_is_keyed_on_the_label_options(ag_csv):
    path, rows = ag_csv
    first = load(ag_config(path))
    renamed = load(ag_config(path, label_map="1=W,2=S,3=B,4=T"))
    plain = load(CorpusConfig(source=str(path), records=True, columns=("1",)))
    assert first.vocab.labels == NAMES and renamed.vocab.labels == ("W", "S", "B", "T")
    assert plain.labels is None and plain.vocab.labels == ()
    assert load(ag_config(path)).labels.tolist() == first.labels.tolist()  # read again from the cache


# ---- batches ---------------------------------------------------------------------------------------------
def labelled_corpus(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("1,ab\n2,c\n1,bca\n")
    return load(CorpusConfig(source=str(path), records=True, columns=("1",), label_column="0", label_map="1=X,2=Y"))


def test_the_label_token_follows_bos_and_is_not_scored(tmp_path):
    c = labelled_corpus(tmp_path)
    v = c.vocab
    P, B, E, X, Y = v.pad_id, v.bos_id, v.eos_id, v.label_id("X"), v.label_id("Y")
    a, b, ch = (v.stoi[s] for s in "abc")
    batch = next(RecordBatches(c, np.arange(3), BatchConfig(batch_size=3, val_fraction=0)).in_order())
    # in_order sorts by length: "c", "ab", "bca"; each reads <bos> <label> text <eos>
    seqs = [[B, Y, ch, E, P, P], [B, X, a, b, E, P], [B, X, b, ch, a, E]]
    want = torch.tensor(seqs)
    assert torch.equal(batch.x, want[:, :-1])
    target = want[:, 1:].clone()
    target[:, 0] = P  # the label is given, not predicted
    assert torch.equal(batch.y, target)
    assert batch.tokens == 2 + 3 + 4  # each record's characters and its <eos>: what bpc counts


def test_the_ngram_text_holds_each_training_record_with_its_label_as_the_network_reads_it(tmp_path, ag_csv):
    from charloom.batching import training_text

    c = labelled_corpus(tmp_path)
    v = c.vocab
    data = prepare(c, BatchConfig(batch_size=1, val_fraction=0, label_dropout=0))
    want = []
    for i in data.train.indices:
        want += [v.bos_id, int(c.labels[i]) + v.label_span.start, *c.ids[c.offsets[i]:c.offsets[i + 1]], v.eos_id]
    assert training_text(data, 10**9)[0].tolist() == want
    assert training_text(data, 7)[0].tolist() == want[-7:]
    # with label dropout, the same records with a share of the labels left out, as in training
    ag = load(ag_config(ag_csv[0]))
    whole, dropped = (training_text(prepare(ag, BatchConfig(val_fraction=0, label_dropout=d)), 10**9)[0]
                      for d in (0, 0.3))
    labels = ag.vocab.label_ids
    assert np.isin(whole, labels).sum() == 400
    assert 0.6 < np.isin(dropped, labels).mean() * len(dropped) / 400 < 0.8
    assert dropped[~np.isin(dropped, labels)].tolist() == whole[~np.isin(whole, labels)].tolist()


@pytest.mark.parametrize("counted", [True, False])
def test_a_labelled_record_scores_the_same_with_its_ngram_read_whole_and_in_a_batch(tmp_path, counted):
    # counted: the n-gram's text holds each record's label, and both paths read it in the contexts; not counted (a
    # file from before labels were counted): both leave the label out of the contexts
    from charloom import ngram
    from charloom.evaluation import evaluate_mixed

    c = labelled_corpus(tmp_path)
    v = c.vocab
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, attention=0, vocab_size=len(v))).eval()
    x, y = ([v.label_id(name)] if counted else [] for name in "XY")
    text = np.array([v.bos_id, *x, *v.encode("ab"), v.eos_id, v.bos_id, *y, *v.encode("c"), v.eos_id] * 3)
    counts = ngram.NGram(text, len(v), 3, given=v.label_span if counted else range(0))
    mixture = ngram.Mixture(counts, np.random.default_rng(0).uniform(0, 1, (4, *ngram.SHAPE)),
                            uncounted=range(0) if counted else v.label_span)
    batches = list(RecordBatches(c, np.arange(3), BatchConfig(batch_size=3, val_fraction=0)).in_order())
    batched = evaluate_mixed(model, mixture, batches)
    gen = Generator(model, v, records=True)
    gen.mixture = mixture
    nats = chars = 0
    for i in range(3):
        ids = [v.bos_id, int(c.labels[i]) + v.label_span.start,
               *c.ids[c.offsets[i]:c.offsets[i + 1]].tolist(), v.eos_id]
        logp = gen.read_logits(ids)  # row t predicts ids[t + 1]; the label (row 0's target) is given
        nats -= sum(float(logp[t, ids[t + 1]]) for t in range(1, len(ids) - 1))
        chars += len(ids) - 2
    assert batched.bpc == pytest.approx(nats / chars / np.log(2), rel=1e-5)


def test_the_mixture_is_fitted_on_the_characters_never_on_the_given_labels(tmp_path, monkeypatch):
    from charloom import ngram
    from charloom.evaluation import fit_mixture

    v = labelled_corpus(tmp_path).vocab
    x, y = v.label_id("X"), v.label_id("Y")
    text = np.array([v.bos_id, x, *v.encode("ab"), v.eos_id, v.bos_id, y, *v.encode("c"), v.eos_id] * 40)
    fitted = []
    real = ngram.fit
    monkeypatch.setattr(ngram, "fit", lambda *a, **k: fitted.append(a[4]) or real(*a, **k))
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, attention=0, vocab_size=len(v))).eval()
    held = 90  # the fit text: the last 90 ids, 20 records; its first id, a <bos>, is not predicted
    fit_mixture(model, text, len(v), v.pad_id, 3, held=held, given=v.label_span)
    fit_mixture(model, text, len(v), v.pad_id, 3, held=held)
    assert not np.isin(fitted[0], v.label_ids).any() and len(fitted[0]) == held - 1 - 20
    assert np.isin(fitted[1], v.label_ids).sum() == 20  # without `given`, each label was a target


def test_label_dropout_leaves_a_seeded_share_of_training_records_unlabelled(tmp_path, ag_csv):
    path, _ = ag_csv
    c = load(ag_config(path))
    first = c.vocab.label_ids[0]

    def labelled_share(dropout):
        data = prepare(c, BatchConfig(batch_size=20, label_dropout=dropout))
        xs = [data.train.batch(0, i).x[:, 1] for i in range(data.train.batches_in_epoch(0))]
        return float(np.mean([(x >= first) & (x < c.vocab.first_char) for x in torch.cat(xs).numpy()]))

    assert labelled_share(0.0) == 1.0 and labelled_share(1.0) == 0.0
    assert 0.8 < labelled_share(0.1) < 0.97
    data = prepare(c, BatchConfig(batch_size=20, label_dropout=0.5))
    assert torch.equal(data.train.batch(1, 3).x, data.train.batch(1, 3).x)  # the same batch after a resume
    assert all((b.x[:, 1] >= first).all() for b in data.val_batches())  # evaluation always gives the label


# ---- the vocabulary ----------------------------------------------------------------------------------------
def test_vocab_with_labels_round_trips_through_the_model_file(tmp_path):
    v = Vocab("abc ", labels=NAMES)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, vocab_size=len(v)))
    checkpoint.save(tmp_path / "m.safetensors", model, v, records=True)
    ck = checkpoint.load(tmp_path / "m.safetensors")
    assert ck.vocab == v and ck.vocab.labels == NAMES and ck.vocab.itos[4] == "<label:World>"
    assert ck.vocab.encode(" a") == [4 + len(NAMES), 5 + len(NAMES)]  # the characters come after the labels


def test_a_vocabulary_without_labels_is_written_and_read_as_before(tmp_path):
    old = {"format": "charloom-vocab", "version": 1, "specials": ["<pad>", "<bos>", "<eos>", "<unk>"],
           "chars": "ab", "unknown": "unk", "normalize": "none", "lower": False}
    v = Vocab.from_dict(old)
    assert v.to_dict() == old and v.labels == () and v.encode("b") == [5]
    assert Vocab("ab") != Vocab("ab", labels=["X"])  # the labels are part of the vocabulary


@pytest.mark.parametrize("labels, message", [
    (["A", "A"], "label 'A' appears twice"), ([""], "must be 1 to"), ("AB", "must be a list"),
    (["x" * 65], "must be 1 to 64"), ([str(i) for i in range(1025)], "more than 1024"),
])
def test_bad_labels_in_a_vocabulary_are_refused(labels, message):
    data = {**Vocab("ab").to_dict(), "labels": labels}
    with pytest.raises(CharloomError, match=message):
        Vocab.from_dict(data)


# ---- sampling ----------------------------------------------------------------------------------------------
def labelled_generator(eager_labels=True):
    """An untrained model over a labelled vocabulary whose head prefers the label tokens above all, and never ends."""
    torch.manual_seed(0)
    v = Vocab("abc ", labels=NAMES)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, vocab_size=len(v)))
    with torch.no_grad():
        if eager_labels:
            model.head.bias[list(v.label_ids)] = 100.0
        model.head.bias[v.eos_id] = -100.0
    return Generator(model, v, records=True)


def test_sampling_for_a_label_reads_its_token_after_bos():
    gen = labelled_generator()
    v = gen.vocab
    assert gen._prefix("ab", "Sports") == [v.bos_id, v.label_id("Sports"), *v.encode("ab")]
    assert gen._prefix("ab") == [v.bos_id, *v.encode("ab")]  # no label: as before


def test_sampling_never_writes_a_label_token():
    gen = labelled_generator()
    for label in (None, "Sports"):
        texts = gen.generate("", 40, n=3, seed=1, label=label)
        assert [len(t) for t in texts] == [40] * 3  # a label token chosen would write nothing
        assert all(set(t) <= set("abc ") for t in texts)


def test_an_unknown_label_is_one_line_listing_the_known_ones():
    gen = labelled_generator()
    with pytest.raises(ConfigError, match=r"^label: 'Sprots' is not one of World, Sports, Business, Sci/Tech$"):
        gen.generate("", 5, label="Sprots")
    plain = Generator(CharRNN(ModelConfig(hidden_size=8, embedding=4, vocab_size=len(Vocab("ab")))), Vocab("ab"))
    with pytest.raises(ConfigError, match="label: this model was not trained on labelled records"):
        plain.generate("", 5, label="Sports")


# ---- training, evaluation, the CLI and the server ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained briefly on the AG-News-shaped CSV: (run folder, corpus config)."""
    folder = tmp_path_factory.mktemp("labelled")
    path = folder / "ag.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(ag_rows(600, seed=1))
    cfg = ag_config(path, cache_dir=str(folder / "cache"))
    with open(folder / "ag_eval.csv", "w", newline="") as f:
        csv.writer(f).writerows(ag_rows(40, seed=2))
    charloom.train(cfg, BatchConfig(batch_size=16, val_fraction=0.2), ModelConfig(hidden_size=64, embedding=16),
                   out=str(folder / "run"), max_steps=300, lr=2e-2, warmup=10, ema=0.0, eval_every=0,
                   sample_length=0, progress=False, precision="fp32")
    return folder / "run", cfg


def test_held_out_records_score_better_given_their_own_label(trained):
    run, cfg = trained
    ck = checkpoint.load(run)
    c = load(cfg, vocab=ck.vocab)
    _, held_out = split_records(c.num_records, BatchConfig(batch_size=32, val_fraction=0.2))
    rows = label_scores(ck.model, c, held_out)
    assert [r["label"] for r in rows] == list(NAMES)
    for r in rows:
        assert r["bpc"] < r["wrong_bpc"] - 0.2, r  # the label is used
        assert r["bpc"] < r["no_label_bpc"], r
        assert set(r["wrong_bpc_each"]) == set(NAMES) - {r["label"]}
    assert sum(r["records"] for r in rows) == len(held_out)


def test_a_trained_model_counts_its_labels_and_a_file_from_before_leaves_them_out(trained, tmp_path):
    run, _ = trained
    ck = checkpoint.load(run)
    assert ck.mixture is not None and ck.info["ngram"][checkpoint.LABELS_COUNTED] is True
    assert ck.mixture.uncounted == range(0) and ck.mixture.ngram.given == ck.vocab.label_span
    assert np.isin(ck.mixture.ngram.ids, ck.vocab.label_ids).any()
    figures = {k: x for k, x in ck.info["ngram"].items() if k != checkpoint.LABELS_COUNTED}
    checkpoint.save(tmp_path / "before.safetensors", ck.model, ck.vocab, records=ck.records,
                    info={**ck.info, "ngram": figures}, mixture=ck.mixture)
    before = checkpoint.load(tmp_path / "before.safetensors").mixture
    assert before.uncounted == ck.vocab.label_span and before.ngram.given == range(0)


def test_eval_reports_bpc_per_label(trained, capsys):
    run, cfg = trained
    flags = ["eval", "--checkpoint", str(run), str(run.parent / "ag_eval.csv"), "--records", "--column", "1", "--label-column", "0",
             "--label-map", AG_MAP, "--cache-dir", cfg.cache_dir]
    assert main(flags + ["--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in figures["labels"]] == list(NAMES)
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "own label" in out and "wrong label" in out and "Sci/Tech" in out


def test_sample_and_info_on_the_command_line(trained, capsys):
    run, _ = trained
    assert main(["sample", "--checkpoint", str(run), "--label", "Sports", "--length", "60", "--seed", "3"]) == 0
    assert "<label" not in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(run), "--label", "Sprots"]) == 2
    assert "label (--label): 'Sprots' is not one of World, Sports, Business, Sci/Tech" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(run), "--label", "Sprots", "--num-samples", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "label (--label): 'Sprots' is not one of" in err  # refused before a heading is printed
    assert main(["info", str(run), "--samples", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corpus"]["labels"] == list(NAMES)


def test_the_http_api_lists_labels_and_takes_one(trained):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from charloom.server import create_app

    run, _ = trained
    client = TestClient(create_app(run), base_url="http://localhost:8000")
    assert client.get("/v1/model").json()["labels"] == list(NAMES)
    r = client.post("/v1/generate", json={"label": "Sports", "length": 30, "seed": 2, "n": 2})
    assert r.status_code == 200, r.text
    assert r.json()["settings"]["label"] == "Sports"
    gen = Generator.from_checkpoint(checkpoint.load(run))
    assert [s["text"] for s in r.json()["samples"]] == gen.generate("", 30, n=2, seed=2, label="Sports")
    bad = client.post("/v1/generate", json={"label": "Sprots", "stream": True})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "label"]
    assert "not one of World, Sports" in bad.json()["detail"][0]["msg"]


def test_an_exported_model_writes_for_a_label_as_pytorch_does(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from charloom.config import ExportConfig
    from charloom.export import export
    from charloom.onnx_generator import OnnxGenerator

    run, _ = trained
    ck = checkpoint.load(run)
    export(ck, ExportConfig(), tmp_path / "model.onnx")
    onnx_gen = OnnxGenerator.load(tmp_path / "model.onnx")
    assert onnx_gen.vocab == ck.vocab and onnx_gen.vocab.labels == NAMES
    # the ONNX file holds the network alone
    want = Generator.from_checkpoint(ck).generate("", 40, n=2, seed=5, label="Business", ngram=False)
    assert onnx_gen.generate("", 40, n=2, seed=5, label="Business") == want


def test_labels_lose_the_spaces_around_them(tmp_path):
    """`text, label` rows put a space before each label: ' Sports' and 'Sports' are one label, printed alike;
    a label map's raw values match the same way."""
    p = tmp_path / "spaced.csv"
    p.write_text("text,label\nfirst goal,Sports\nrate cut, Business\nsecond goal, Sports \nnew talks,World\n")
    c = load(CorpusConfig(source=str(p), records=True, columns=("text",), label_column="label", header=True))
    assert c.vocab.labels == ("Business", "Sports", "World")
    assert [c.vocab.labels[i] for i in c.labels] == ["Sports", "Business", "Sports", "World"]
    q = tmp_path / "coded.csv"
    q.write_text("text,label\nfirst goal, 2\nnew talks,1\n")
    c = load(CorpusConfig(source=str(q), records=True, columns=("text",), label_column="label", header=True,
                          label_map="1=World,2=Sports"))
    assert [c.vocab.labels[i] for i in c.labels] == ["Sports", "World"]


def test_a_model_whose_labels_kept_their_spaces_still_reads_its_own_corpus(tmp_path):
    """A model from before labels lost their spaces has ' Sports' among its labels: its corpus, read again with
    the model's vocabulary (as eval does), still finds it."""
    p = tmp_path / "spaced.csv"
    p.write_text("text,label\nfirst goal, Sports\nnew talks,World\n")
    old = Vocab("abcdefghijklmnopqrstuvwxyz ", labels=[" Sports", "World"])
    c = load(CorpusConfig(source=str(p), records=True, columns=("text",), label_column="label", header=True),
             vocab=old)
    assert [c.vocab.labels[i] for i in c.labels] == [" Sports", "World"]


def test_a_run_whose_labels_kept_their_spaces_resumes_and_writes_for_them(tmp_path, monkeypatch, tiny):
    """A labelled run trained before labels lost their spaces holds ' Sports' in its vocabulary: it resumes on
    the same text (read now, the labels would lose their spaces and the vocabulary would differ), and writes for
    'Sports' as for ' Sports'."""
    from charloom import corpus as corpus_mod

    p = tmp_path / "spaced.csv"
    p.write_text("text,label\n" + "".join(f"goal {i}, Sports\ntalks {i}, World\n" for i in range(30)))
    opts = dict(source=str(p), records=True, columns=("text",), label_column="label", out=str(tmp_path / "run"),
                **{k: v for k, v in tiny.items() if k != "seq_len"})
    stripping = corpus_mod.label_names
    monkeypatch.setattr(corpus_mod, "label_names", lambda raw, cfg: raw)  # labels as they were read before
    charloom.train(max_steps=2, cache_dir=str(tmp_path / "old"), **opts)
    monkeypatch.setattr(corpus_mod, "label_names", stripping)
    r = charloom.train(max_steps=4, resume=True, cache_dir=str(tmp_path / "new"), **opts)
    assert r.progress.step == 4 and r.vocab.labels == (" Sports", " World")
    assert r.vocab.label_id("Sports") == r.vocab.label_id(" Sports") != r.vocab.label_id("World")


def test_a_label_asked_for_loses_its_spaces_as_a_label_read_does():
    v = Vocab("abc ", labels=["Sports", "World"])
    assert v.label_id(" Sports ") == v.label_id("Sports") != v.label_id("World")
    with pytest.raises(CharloomError, match=r"^label: ' Sprots' is not one of Sports, World$"):
        v.label_id(" Sprots")


@pytest.mark.parametrize("options, message", [
    (dict(columns=("text",), label_column="text"), r"^label_column: 'text' is also a text column \(--column\)"),
    (dict(field="text", label_field="text"), r"^label_field: 'text' is also the text's field \(--field\)")])
def test_the_text_is_not_its_own_label(options, message):
    """Each record would be its own label: a vocabulary of as many labels as distinct texts, and nothing to learn."""
    with pytest.raises(ConfigError, match=message):
        CorpusConfig(source="t.csv", records=True, **options)
