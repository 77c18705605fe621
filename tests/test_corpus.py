import contextlib
import gzip
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
import unicodedata

import numpy as np
import pytest

from charloom import corpus as corpus_mod
from charloom.config import CorpusConfig
from charloom.corpus import bundled, load, read_chunks
from charloom.errors import CharloomError
from charloom.vocab import Vocab, prepare_text

AG_NEWS = (
    '"3","Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling\\band '
    'of ultra-cynics, are seeing green again."\n'
    '"3","Carlyle Looks Toward Commercial Aerospace (Reuters)","Reuters - Private investment firm Carlyle Group,\\which '
    'has a reputation for making well-timed and occasionally\\controversial plays in the defense industry."\n'
    '"4","Comets, Asteroids and Planets around a Nearby Star (SPACE.com)","SPACE.com - A nearby star thought to '
    'harbor comets and asteroids now appears to have planets."\n'
)
HAPPY = (
    '"@amy Thanks for the follow, have a ""great"" day!",4\n'
    '"just got home, so happy :) #friday",4\n'
    '"multi\nline tweet, still one record",4\n'
)


def records(tmp_path, name, content, **kw):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8", newline="") if isinstance(content, str) else p.write_bytes(content)
    c = load(CorpusConfig(source=str(p), records=True, **kw))
    return [c.record(i) for i in range(c.num_records)]


def test_ag_news_columns_by_index_without_header(tmp_path):
    recs = records(tmp_path, "train.csv", AG_NEWS, columns=("1", "2"))
    assert len(recs) == 3
    assert recs[0].startswith("Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers")
    assert recs[2].endswith("appears to have planets.")


def test_ag_news_columns_by_name_with_header(tmp_path):
    content = '"Class Index","Title","Description"\n' + AG_NEWS
    recs = records(tmp_path, "train.csv", content, columns=("Title", "Description"), column_sep=" | ")
    assert recs[1] == ("Carlyle Looks Toward Commercial Aerospace (Reuters) | Reuters - Private investment firm "
                       "Carlyle Group,\\which has a reputation for making well-timed and occasionally\\controversial "
                       "plays in the defense industry.")
    assert len(recs) == 3  # the header is not a record


def test_negative_index_picks_from_the_end(tmp_path):
    assert records(tmp_path, "t.csv", AG_NEWS, columns=("-3",))[0] == "3"


def test_sentiment140_style_column_zero(tmp_path):
    recs = records(tmp_path, "happy.csv", HAPPY, columns=("0",))
    assert recs == ['@amy Thanks for the follow, have a "great" day!', "just got home, so happy :) #friday",
                    "multi\nline tweet, still one record"]


def test_a_quote_never_closed_is_named_not_read_as_the_rest_of_the_file(tmp_path):
    rows = "".join(f"{i},row {i}\n" for i in range(3, 40))
    with pytest.raises(CharloomError, match=r"bad.csv: line 3: a quoted field .* never closed.* last 38 lines"):
        records(tmp_path, "bad.csv", 'id,text\n1,fine\n2,"never closed\n' + rows, columns=("text",))
    with pytest.raises(CharloomError, match=r"head.csv: line 1: a quoted field .* never closed"):
        records(tmp_path, "head.csv", '"id,text\n1,fine\n2,more\n', columns=("text",))
    with pytest.raises(CharloomError, match=r"last.csv: line 2: a quoted field .* never closed, so the rest of the "
                                            r"line would be one field$"):
        records(tmp_path, "last.csv", 'a,b\n"unterminated,2\n', columns=("a",))
    # a closed quote over lines, and a lone quote inside an unquoted field, are CSV as read before
    fine = 'id,text,note\n1,5" screen,x\n2,"two\nlines",x\n3,a 5" screen,"two\nlines"\n'
    assert records(tmp_path, "fine.csv", fine, columns=("text",)) == ['5" screen', "two\nlines", 'a 5" screen']


def test_csv_unknown_column_names_the_columns(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("label,text\n1,hello\n")
    with pytest.raises(CharloomError, match=r"c.csv: column 'title' not found \(columns: label, text\)"):
        load(CorpusConfig(source=str(p), columns=("title",)))


def test_csv_index_out_of_range_and_missing_choice(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(AG_NEWS)
    with pytest.raises(CharloomError, match="column 7 out of range"):
        load(CorpusConfig(source=str(p), columns=("7",)))
    with pytest.raises(CharloomError, match="has 3 columns; choose the text with --column"):
        load(CorpusConfig(source=str(p)))


def test_tsv_and_single_column_default(tmp_path):
    assert records(tmp_path, "a.tsv", "x\ty\nz\tw\n", columns=("1",)) == ["y", "w"]
    assert records(tmp_path, "one.csv", "alpha\nbeta\n") == ["alpha", "beta"]


def test_jsonl_field_and_nested_field(tmp_path):
    lines = [{"text": "first", "meta": {"t": "a"}}, {"text": "second 🎉", "meta": {"t": "b"}}]
    content = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n"
    assert records(tmp_path, "d.jsonl", content, field="text") == ["first", "second 🎉"]
    assert records(tmp_path, "e.jsonl", content, field="meta.t") == ["a", "b"]
    # a key that holds the dots itself, as flattened exports write them, is read before the nested path
    flat = '{"meta.t": "flat", "meta": {"t": "nested"}}\n{"meta": {"t": "only nested"}}\n'
    assert records(tmp_path, "f.jsonl", flat, field="meta.t") == ["flat", "only nested"]
    deeper = '{"a": {"b.c": "inner"}}\n{"a.b": {"c": "outer"}}\n{"a": {"b": {"c": "nested"}}}\n'
    assert records(tmp_path, "g.jsonl", deeper, field="a.b.c") == ["inner", "outer", "nested"]


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(CharloomError, match=r"d.jsonl: line 2: field 'text' not found \(fields: body\)"):
        load(CorpusConfig(source=str(p), field="text"))
    p.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(CharloomError, match=r"d.jsonl: line 2: not valid JSON \(.* at column 2\)$"):
        load(CorpusConfig(source=str(p), field="text"))
    p.write_text('{"text": "a\ttab"}\n')
    with pytest.raises(CharloomError, match=r"d.jsonl: line 1: not valid JSON \(Invalid control character at column 12\)"):
        load(CorpusConfig(source=str(p), field="text"))
    with pytest.raises(CharloomError, match="JSONL needs --field"):
        load(CorpusConfig(source=str(p)))


@pytest.mark.parametrize("line, message", [("[" * 100_000, "JSON nested too deeply to read"),
                                           ('{"text": ' + "1" * 5000 + "}", "field 'text' is int, not text"),
                                           ('{"text": NaN}', "field 'text' is float, not text")])
def test_a_jsonl_line_python_cannot_parse_names_the_file_and_line(tmp_path, line, message):
    p = tmp_path / "deep.jsonl"
    p.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(CharloomError, match=f"deep.jsonl: line 2: {message}"):
        load(CorpusConfig(source=str(p), field="text", records=True))


def test_lines_format_skips_blank_lines_and_strips_crlf(tmp_path):
    p = tmp_path / "titles.txt"
    p.write_bytes(b"one\r\n\r\ntwo\r\nthree")
    c = load(CorpusConfig(source=str(p), records=True))
    assert [c.record(i) for i in range(c.num_records)] == ["one", "two", "three"]
    assert c.stats["empty_records_skipped"] == 1


@pytest.mark.parametrize("name, content, opts, want", [
    ("mac.txt", b"one\rtwo\r\rthree\r", {}, ["one", "two", "three"]),
    # a quoted field keeps its "\r", as a file opened with newline="" gives it to the csv module
    ("mac.csv", b'name,score\r"a\rb",1\rc,2\r', dict(columns=("name",)), ["a\rb", "c"]),
    ("mac.jsonl", b'{"t": "one"}\r{"t": "two"}\r', dict(field="t"), ["one", "two"]),
])
def test_a_lone_cr_ends_a_line_of_every_line_based_format(tmp_path, name, content, opts, want):
    assert records(tmp_path, name, content, **opts) == want


def test_a_lone_cr_stays_a_character_of_a_continuous_text(tmp_path):
    p = tmp_path / "mac.txt"
    p.write_bytes(b"one\rtwo\r")
    assert load(CorpusConfig(source=str(p))).text() == "one\rtwo\r"  # kept as "\r\n" is
    c = load(CorpusConfig(source=str(p), records=True))
    assert [c.record(i) for i in range(c.num_records)] == ["one", "two"]


@pytest.mark.parametrize("chunk", range(1, 7))
def test_a_crlf_split_between_two_reads_is_one_line_end(tmp_path, monkeypatch, chunk):
    # with every read size, some "\r\n" has its "\r" at the end of one read and its "\n" at the start of the next
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", chunk)
    p = tmp_path / "mixed.txt"
    p.write_bytes(b"abc\r\ndef\rgh\r\nij\n\r\nk\r\n")
    cfg = CorpusConfig(source=str(p), records=True, cache_dir=str(tmp_path / "cache"))
    assert list(corpus_mod.iter_records(corpus_mod.resolve(cfg), cfg)) == ["abc", "def", "gh", "ij", "", "k"]
    pieces = list(read_chunks(p))
    assert not any(a.endswith("\r") and b.startswith("\n") for a, b in zip(pieces, pieces[1:]))


def test_only_cr_and_lf_end_a_record_not_the_other_characters_splitlines_splits_on(tmp_path):
    inside = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i"
    content = f"{inside}\r{inside}\r\nlast\n".encode()
    assert records(tmp_path, "seps.txt", content) == [inside, inside, "last"]
    fields = records(tmp_path, "seps.jsonl", json.dumps({"t": inside}, ensure_ascii=False).encode() + b"\r",
                     field="t")
    assert fields == [inside]


def test_folder_with_extension_filter_and_glob(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / "a.py").write_text("import os\n")
    (src / "pkg" / "b.py").write_text("x = 1\n")
    (src / "notes.md").write_text("not code\n")
    (src / ".git" / "c.py").write_text("hidden\n")
    c = load(CorpusConfig(source=str(src), extensions=(".py",)))
    assert c.text() == "import os\n" + "\n" + "x = 1\n"  # sorted files joined by the separator
    assert c.stats["files"] == 2
    g = load(CorpusConfig(source=str(src / "**" / "*.py"), separator=""))
    assert g.text() == "import os\nx = 1\n"
    per_file = load(CorpusConfig(source=str(src), extensions=("py",), records=True, format="text"))
    assert [per_file.record(i) for i in range(per_file.num_records)] == ["import os\n", "x = 1\n"]


@pytest.mark.parametrize("ext, read", [(".py.gz", ["g"]), ("py.gz", ["g"]), (".gz", ["g", "n"]), (".py", ["a", "g"]),
                                       (".PY", ["a", "g"])])
def test_an_extension_names_a_compressed_files_whole_ending_or_either_part(tmp_path, ext, read):
    (tmp_path / "a.py").write_text("a\n")
    (tmp_path / "g.py.gz").write_bytes(gzip.compress(b"g\n"))
    (tmp_path / "n.md.gz").write_bytes(gzip.compress(b"n\n"))
    c = load(CorpusConfig(source=str(tmp_path), extensions=(ext,), records=True, format="lines"))
    assert [c.record(i) for i in range(c.num_records)] == read


def test_bom_is_stripped_and_crlf_kept(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbfHello\r\nWorld\r\n")
    c = load(CorpusConfig(source=str(p)))
    assert c.text() == "Hello\r\nWorld\r\n"


def test_other_encodings(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("café naïve\n".encode("latin-1"))
    assert load(CorpusConfig(source=str(p), encoding="latin-1")).text() == "café naïve\n"
    u16 = tmp_path / "u16.txt"
    u16.write_bytes("héllo 🌍\n".encode("utf-16"))  # with its BOM
    assert load(CorpusConfig(source=str(u16), encoding="utf-16")).text() == "héllo 🌍\n"
    with pytest.raises(CharloomError, match="--encoding: 'nope' is not a known text encoding"):
        load(CorpusConfig(source=str(p), encoding="nope"))


def test_non_utf8_bytes_give_file_and_byte_offset(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good text\n\xff\xfe more")
    with pytest.raises(CharloomError, match=r"bad.txt: byte offset 10: bytes ff are not valid utf-8"):
        load(CorpusConfig(source=str(p)))
    c = load(CorpusConfig(source=str(p), decode_errors="replace"))
    assert c.text() == "good text\n\ufffd\ufffd more"


def test_byte_offset_is_exact_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 7)
    p = tmp_path / "bad.txt"
    data = "héllo wörld 🌍\n".encode() * 5
    p.write_bytes(data + b"\xc3(" + b"tail")
    with pytest.raises(CharloomError, match=rf"byte offset {len(data)}:"):
        list(read_chunks(p))


def test_small_read_chunks_split_multibyte_characters_correctly(tmp_path, monkeypatch):
    text = "a🌍b\r\nçé中\n" * 50 + "end without newline"
    p = tmp_path / "t.txt"
    p.write_bytes(text.encode())
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 5)
    pieces = list(read_chunks(p))
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1])  # cut only at newlines
    c = load(CorpusConfig(source=str(p)))
    assert c.text() == text


def test_a_text_without_newlines_is_read_in_bounded_pieces_that_read_as_the_whole(tmp_path, monkeypatch):
    # final sigmas, a combining accent, a ligature NFKC splits, and every kind of cut character
    text = "ΟΔΟΣ ΣΑΣ e\u0301ﬁ Ab,12(x)-y;\tz ΣΑΣ-ΟΔΟΣ,ΑΣ9 " * 300
    p = tmp_path / "one-line.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 64)
    cfg = CorpusConfig(source=str(p), normalize="NFKC", lower=True)
    pieces = list(corpus_mod.iter_stream(corpus_mod.resolve(cfg), cfg))
    assert "".join(pieces) == text
    assert len(pieces) > 50 and max(map(len, pieces)) <= 3 * 64  # held back no more than a few reads
    assert load(cfg).text() == prepare_text(text, "NFKC", True)
    assert all(piece.endswith("\n") for piece in list(read_chunks(p))[:-1])  # lines stay whole where asked


def test_character_counts_do_not_widen_the_whole_corpus(monkeypatch):
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 1 << 16)
    ids = np.random.default_rng(0).integers(0, 70, 4_000_000).astype(np.uint8)
    c = corpus_mod.Corpus("x", Vocab([chr(65 + i) for i in range(68)]), ids, None)
    tracemalloc.start()
    counts = c.counts()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(counts, np.bincount(ids, minlength=len(c.vocab)))
    assert peak < len(ids)  # a whole-array count widens each id to 8 bytes


def test_an_encoding_killed_before_its_rename_is_cleaned_up_by_the_next_load(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("to be or not to be\n" * 100)
    cfg = CorpusConfig(source=str(p), cache_dir=str(tmp_path / "cache"))
    dies = ("import os, charloom.corpus as c, charloom.vocab as v; from charloom.config import CorpusConfig as C; "
            f"v.Vocab.encode_array = lambda *a, **k: os._exit(9); c.load(C(**{cfg.to_dict()!r}))")
    assert subprocess.run([sys.executable, "-c", dies]).returncode == 9  # killed mid-encode
    assert [q for q in (tmp_path / "cache" / "ids").iterdir() if corpus_mod.atomic.TMP_MARK in q.name]
    assert load(cfg).text() == p.read_text()
    assert not [q for q in (tmp_path / "cache").rglob("*") if corpus_mod.atomic.TMP_MARK in q.name]


def test_compressed_file_is_read_by_inner_extension(tmp_path):
    p = tmp_path / "rows.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("a,b\nc,d\n")
    c = load(CorpusConfig(source=str(p), columns=("1",), records=True))
    assert [c.record(i) for i in range(c.num_records)] == ["b", "d"]


def test_empty_corpus_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    with pytest.raises(CharloomError, match="empty.txt: the corpus is empty"):
        load(CorpusConfig(source=str(p)))
    q = tmp_path / "blank.txt"
    q.write_text("\n\n\n")
    with pytest.raises(CharloomError, match="blank.txt: the corpus is empty"):
        load(CorpusConfig(source=str(q), records=True))


def test_missing_source_names_the_bundled_corpora(tmp_path):
    with pytest.raises(CharloomError, match=r"nothere.txt: no such file, folder or bundled corpus \(bundled: names, shakespeare\)"):
        load(CorpusConfig(source=str(tmp_path / "nothere.txt")))
    with pytest.raises(CharloomError, match="no files match"):
        load(CorpusConfig(source=str(tmp_path / "*.nope")))


def test_cached_second_load_does_not_read_the_text(tmp_path, monkeypatch):
    p = tmp_path / "book.txt"
    p.write_text("to be or not to be\n" * 100)
    first = load(CorpusConfig(source=str(p)))
    monkeypatch.setattr(corpus_mod, "read_chunks", lambda *a, **k: pytest.fail("the text was read again"))
    second = load(CorpusConfig(source=str(p)))
    assert isinstance(second.ids, np.memmap)
    assert np.array_equal(first.ids, second.ids) and second.vocab == first.vocab


def test_cache_follows_file_content_and_options(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("abc\n")
    assert load(CorpusConfig(source=str(p))).text() == "abc\n"
    p.write_text("xyz!\n")
    assert load(CorpusConfig(source=str(p))).text() == "xyz!\n"
    assert load(CorpusConfig(source=str(p), lower=True)).text() == "xyz!\n"
    p.write_text("ABC\n")
    assert load(CorpusConfig(source=str(p), lower=True)).text() == "abc\n"


@pytest.mark.parametrize("first, then", [("unk", "error"), ("error", "unk")])
def test_a_cached_corpus_keeps_each_reads_unknown_character_policy(tmp_path, first, then):
    p = tmp_path / "book.txt"
    p.write_text("to be or not to be\n" * 10)
    a = load(CorpusConfig(source=str(p), cache_dir=str(tmp_path / "c"), unknown=first))
    b = load(CorpusConfig(source=str(p), cache_dir=str(tmp_path / "c"), unknown=then))
    assert (a.vocab.unknown, b.vocab.unknown) == (first, then)
    assert np.array_equal(a.ids, b.ids) and len(list((tmp_path / "c" / "ids").iterdir())) == 1  # one encoding


def test_ids_use_the_smallest_dtype(tmp_path):
    p = tmp_path / "wide.txt"
    p.write_text("".join(chr(0x4E00 + i) for i in range(400)))
    assert load(CorpusConfig(source=str(p))).ids.dtype == np.int16
    assert load(CorpusConfig(source="names")).ids.dtype == np.uint8


def test_encoding_with_a_given_vocab_counts_unknowns(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abcabc")
    base = load(CorpusConfig(source=str(p)))
    q = tmp_path / "other.txt"
    q.write_text("abzz")
    other = load(CorpusConfig(source=str(q)), vocab=base.vocab)
    assert other.ids.tolist() == base.vocab.encode("abzz")
    assert other.stats["unknown_characters"] == 2


def test_a_given_vocab_reads_text_in_its_own_case_and_normalisation(tmp_path):
    """A lower-cased model's vocabulary has no capitals: a text read for it is lower-cased as its training text
    was, whatever the config says, so `score` gives the figure `charloom eval` gives, not one of <unk>s."""
    p = tmp_path / "t.txt"
    p.write_text("the cat")
    vocab = load(CorpusConfig(source=str(p), lower=True, normalize="NFKC", cache_dir=str(tmp_path / "c"))).vocab
    q = tmp_path / "other.txt"
    q.write_text("The ＣAT")  # a fullwidth C: NFKC makes it C, lower-casing c
    other = load(CorpusConfig(source=str(q), cache_dir=str(tmp_path / "c")), vocab=vocab)
    assert other.ids.tolist() == vocab.encode("the cat") and other.stats["unknown_characters"] == 0


def test_bundled_corpora_are_listed_and_readable():
    corpora = bundled()
    assert set(corpora) == {"shakespeare", "names"}
    names = load(CorpusConfig(source="names"))
    assert names.is_records and names.num_records == corpora["names"].records == 5163
    assert "Mary" in {names.record(i) for i in range(names.num_records)}


def test_bundled_shakespeare_is_whole():
    c = load(CorpusConfig(source="shakespeare"))
    assert not c.is_records
    assert len(c.ids) == bundled()["shakespeare"].characters
    head = c.vocab.decode(c.ids[:2000])
    assert "by William Shakespeare" in head


def test_a_file_name_that_is_not_utf8_is_read_and_named_printably(tmp_path):
    name = os.fsdecode(b"bad\xffname.txt")  # legal on Linux; Python carries the byte as a lone surrogate
    (tmp_path / name).write_text("to be or not to be\n")
    c = load(CorpusConfig(source=str(tmp_path / name)))
    assert c.text() == "to be or not to be\n"
    assert c.name.endswith("bad\\xffname.txt")  # printable, where the surrogate would fail to encode
    with pytest.raises(CharloomError, match=r"bad\\xffnone.txt: no such file") as e:
        load(CorpusConfig(source=str(tmp_path / os.fsdecode(b"bad\xffnone.txt"))))
    str(e.value).encode("utf-8")  # the message prints anywhere


def test_a_file_that_cannot_be_read_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    p = tmp_path / "locked.txt"
    p.write_text("to be or not to be\n")
    real_open = open

    def locked(file, *a, **k):  # what chmod 000 does, even to a test run as root
        if str(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(corpus_mod, "open", locked, raising=False)
    with pytest.raises(CharloomError, match=r"^\S*locked.txt: cannot read \(Permission denied\)$"):
        load(CorpusConfig(source=str(p)))


def test_a_cache_folder_that_cannot_be_written_names_cache_dir(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("to be or not to be\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    for sub in ("hashes", "ids"):  # files where folders go: written to as surely as a read-only folder is
        (cache / sub).write_text("")
    with pytest.raises(CharloomError, match=rf"^--cache-dir: cannot write the encoded corpus in {cache} \("):
        load(CorpusConfig(source=str(p), cache_dir=str(cache)))


def test_a_full_cache_disk_is_said_as_full_not_as_unwritable(tmp_path, monkeypatch):
    p = tmp_path / "book.txt"
    p.write_text("to be or not to be\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(corpus_mod, "_write_ids", full)
    cache = tmp_path / "cache"
    with pytest.raises(CharloomError, match=rf"^--cache-dir: cannot write the encoded corpus in {cache} \(No space "
                                            r"left on device\); free space there, or name a folder on a disk with "
                                            r"room for it$"):
        load(CorpusConfig(source=str(p), cache_dir=str(cache)))
    assert not [x for x in (cache / "ids").iterdir()]  # nothing half-written left behind


def test_a_cache_that_cannot_take_hash_notes_still_serves_its_ids(tmp_path, monkeypatch):
    p = tmp_path / "book.txt"
    p.write_text("to be or not to be\n")
    cfg = CorpusConfig(source=str(p), cache_dir=str(tmp_path / "cache"))
    first = load(cfg)
    shutil.rmtree(tmp_path / "cache" / "hashes")
    (tmp_path / "cache" / "hashes").write_text("")  # no note can be written now
    monkeypatch.setattr(corpus_mod, "read_chunks", lambda *a, **k: pytest.fail("the text was read again"))
    assert np.array_equal(load(cfg).ids, first.ids)


@pytest.mark.parametrize("codec", ["hex", "zlib", "rot13", "base64", "undefined"])
def test_a_codec_that_is_not_a_text_encoding_is_refused(tmp_path, codec):
    p = tmp_path / "t.txt"
    p.write_text("to be or not to be\n")
    with pytest.raises(CharloomError, match=rf"^--encoding: '{codec}' is a Python codec but not a text encoding"):
        load(CorpusConfig(source=str(p), encoding=codec))


def test_utf16_without_a_byte_order_mark_is_a_one_line_error(tmp_path):
    p = tmp_path / "u16.txt"
    p.write_bytes("héllo\n".encode("utf-16-le"))
    with pytest.raises(CharloomError, match=r"u16.txt: byte offset 0: not valid utf-16 .*e\.g\. utf-16-le\)$"):
        load(CorpusConfig(source=str(p), encoding="utf-16"))
    assert load(CorpusConfig(source=str(p), encoding="utf-16-le")).text() == "héllo\n"


def test_a_symlink_loop_under_a_recursive_glob_reads_each_file_once(tmp_path):
    fold = tmp_path / "fold"
    (fold / "sub").mkdir(parents=True)
    (fold / "a.txt").write_text("alpha\n")
    (fold / "sub" / "b.txt").write_text("beta\n")
    (fold / "sub" / "loop").symlink_to("..")  # fold/sub/loop/sub/loop/... down to the kernel's limit
    (fold / "alias.txt").symlink_to("a.txt")
    by_glob = load(CorpusConfig(source=str(fold / "**" / "*.txt"), separator=""))
    by_folder = load(CorpusConfig(source=str(fold), separator=""))
    assert by_glob.stats["files"] == by_folder.stats["files"] == 2
    assert by_glob.text() == by_folder.text() == "alpha\nbeta\n"  # sorted, the first name of each file kept


def test_a_min_count_above_every_count_names_the_flag_and_the_counts(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("aaab")
    with pytest.raises(CharloomError, match=r"^--min-count 4: .* 2 distinct characters, the most frequent 3 times\)$"):
        load(CorpusConfig(source=str(p), min_count=4))
    assert load(CorpusConfig(source=str(p), min_count=3)).vocab.chars == ("a",)


LONG_LINES = {
    # Chinese with full-width punctuation, Japanese with voiced kana (composed and not), Korean syllables and jamo:
    # none of the break characters of _CUTS
    "cjk": "天地玄黃，宇宙洪荒。日月盈昃、辰宿列張「寒來暑往」がか\u3099ｶﾞ한글\u1112\u1161\u11ab",
    # Greek capitals run together: final sigmas, tonos as a separate mark, and a ligature NFKC splits
    "greek": "ΟΔΟΣΣΑΣΑ\u0301ΣΑΣ·ﬁΣ‥ΟΣ",
}


@pytest.mark.parametrize("kind", sorted(LONG_LINES))
@pytest.mark.parametrize("normalize, lower", [("NFKC", True), ("NFC", True), ("none", False)])
def test_a_long_line_without_break_characters_reads_in_bounded_pieces_as_the_whole(tmp_path, monkeypatch, kind,
                                                                                   normalize, lower):
    text = LONG_LINES[kind] * 200
    p = tmp_path / "one-line.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 64)
    cfg = CorpusConfig(source=str(p), normalize=normalize, lower=lower)
    pieces = list(corpus_mod.iter_stream(corpus_mod.resolve(cfg), cfg))
    assert "".join(pieces) == text
    assert len(pieces) > 20 and max(map(len, pieces)) <= 3 * 64  # not the whole line at once
    c = load(cfg)
    assert np.array_equal(c.ids, c.vocab.encode_array(prepare_text(text, normalize, lower), prepared=True))


def test_a_line_with_no_safe_place_to_cut_is_still_cut_when_read_as_is(tmp_path, monkeypatch):
    text = ("a" + "\u0301" * 50) * 40  # marks only: a normalising read must hold it, a plain one need not
    p = tmp_path / "marks.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 64)
    cfg = CorpusConfig(source=str(p))
    pieces = list(corpus_mod.iter_stream(corpus_mod.resolve(cfg), cfg))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 3 * 64
    assert load(cfg).text() == text
    nfc = CorpusConfig(source=str(p), normalize="NFC")
    assert load(nfc).text() == prepare_text(text, "NFC")


def test_places_chosen_to_cut_part_normalisation_and_lower_casing_cleanly():
    # every character of the running Python's Unicode that composes with one before it fails the test for
    # a fresh start, and composing never makes a character that stops a final-sigma scan into one that does not
    for cp in range(0x110000):
        d = unicodedata.decomposition(chr(cp)).split()
        if len(d) == 2 and not d[0].startswith("<"):
            first, second = chr(int(d[0], 16)), chr(int(d[1], 16))
            assert not corpus_mod._edge(second)[0], hex(cp)
            if corpus_mod._sigma_reads(first)[0]:
                assert corpus_mod._sigma_reads(chr(cp))[0], hex(cp)
            if corpus_mod._sigma_reads(first) == (True, False):
                assert corpus_mod._sigma_reads(chr(cp)) == (True, False), hex(cp)
    # and, over random text, each place it allows leaves the prepared text as it is whole
    pool = "ΣσςΑΟaAb中，。가각\u1161\u11ab\u0301\u0308\u093c\u0bbe\u0bc6.'·‥ﬁⒶªʰİ¨\u00ad\u0345\u3099かｶﾞ\u0f73é"
    rng = np.random.default_rng(0)
    for _ in range(3000):
        t = "".join(rng.choice(list(pool), 8))
        for i in range(1, len(t)):
            if corpus_mod._parts_cleanly(t[i - 1], t[i]):
                for form in ("none", "NFC", "NFKC"):
                    assert prepare_text(t[:i], form, True) + prepare_text(t[i:], form, True) == \
                        prepare_text(t, form, True), (t, i, form)


@pytest.mark.parametrize("name, content, opts, message", [
    ("t.txt", "hello\n", dict(columns=("0",)), r"^--column: only for CSV or TSV files; .*t\.txt is read as text"),
    ("t.txt", "hello\n", dict(records=True, label_column="0"), r"^--label-column: only for CSV or TSV files; .* lines"),
    ("r.jsonl", '{"a": "x"}\n', dict(field="a", columns=("0",)), r"^--column: only for CSV or TSV files"),
    ("n.csv", "a\nx\n", dict(columns=("a",), field="a"), r"^--field: only for JSONL files; .*n\.csv is read as csv"),
    ("t.txt", "hello\n", dict(extensions=(".txt",)), r"^--ext: chooses the files of a folder or a glob; .*t\.txt"),
])
def test_options_for_another_kind_of_file_are_refused_not_ignored(tmp_path, name, content, opts, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(CharloomError, match=message):
        load(CorpusConfig(source=str(p), cache_dir=str(tmp_path / "cache"), **opts))


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_a_label_python_wrote_as_nan_is_refused_and_elsewhere_left_alone(tmp_path, word):
    """Python's json writes NaN and Infinity (allow_nan) where JSON has no such value: as a label it would name a
    class "NaN"; in a field the corpus does not read it stays unread."""
    p = tmp_path / "nan.jsonl"
    p.write_text(f'{{"text": "one", "tag": "a", "score": {word}}}\n{{"text": "two", "tag": {word}}}\n')
    with pytest.raises(CharloomError, match=rf"nan.jsonl: line 2: label field 'tag' is {word}, not a label$"):
        load(CorpusConfig(source=str(p), field="text", label_field="tag", records=True))
    c = load(CorpusConfig(source=str(p), field="text", records=True))
    assert [c.record(i) for i in range(c.num_records)] == ["one", "two"]


def test_a_jsonl_record_whose_field_is_null_is_counted_with_the_skipped_empty_ones(tmp_path):
    p = tmp_path / "posts.jsonl"
    p.write_text('{"text": "one", "tag": "a"}\n{"text": null, "tag": "b"}\n{"text": "", "tag": "c"}\n'
                 '{"text": "two", "tag": "a"}\n')
    c = load(CorpusConfig(source=str(p), field="text", label_field="tag", records=True,
                          cache_dir=str(tmp_path / "cache")))
    assert [c.record(i) for i in range(c.num_records)] == ["one", "two"]
    assert c.stats["empty_records_skipped"] == 2 and c.vocab.labels == ("a",)


def test_a_lone_surrogate_in_jsonl_is_refused_when_read_not_when_the_run_saves(tmp_path):
    """A JSON escape such as \\ud800 without its pair is no character: a model file cannot hold it, so a run
    that read it would train its whole budget and then fail to save."""
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "fine"}\n{"text": "hello\\ud800world", "tag": "x"}\n')
    with pytest.raises(CharloomError, match=r"s.jsonl: line 2: field 'text': U\+D800 at position 5 is a lone "
                                            r"surrogate"):
        load(CorpusConfig(source=str(p), field="text", records=True))
    p.write_text('{"text": "fine", "tag": "a\\udfffb"}\n')
    with pytest.raises(CharloomError, match=r"line 1: label field 'tag': U\+DFFF at position 1"):
        load(CorpusConfig(source=str(p), field="text", label_field="tag", records=True))


def test_a_jsonl_integer_too_long_for_python_is_read_where_the_corpus_does_not_use_it(tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_text('{"text": "abc", "n": ' + "9" * 5000 + '}\n{"text": "abd", "n": 1}\n')
    assert records(tmp_path, "n.jsonl", p.read_text(), field="text") == ["abc", "abd"]
    with pytest.raises(CharloomError, match=r"n.jsonl: line 1: field 'n' is int, not text"):
        load(CorpusConfig(source=str(p), field="n", records=True))


def test_a_damaged_gzip_file_is_one_line(tmp_path):
    data = bytearray(gzip.compress(b"hello world\n" * 1000))
    data[10] = 0xFF  # the first block's header: zlib's own error, not an OSError
    (tmp_path / "bad.txt.gz").write_bytes(bytes(data))
    with pytest.raises(CharloomError, match=r"bad.txt.gz: cannot read \(Error -3 while decompressing"):
        load(CorpusConfig(source=str(tmp_path / "bad.txt.gz")))


@pytest.mark.parametrize("name, content, hint", [
    ("u16.txt", ("Hello world, a line.\r\n" * 100).encode("utf-16-le"), "--encoding utf-16-le"),
    ("a.tar", b"books/a.txt" + b"\0" * 500 + b"Call me Ishmael.\n" * 20, "unpacked"),
])
def test_text_that_is_mostly_nul_is_refused_with_what_it_likely_is(tmp_path, name, content, hint):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CharloomError, match=rf"{name}: [\d,]+ of its first [\d,]+ characters are NUL") as e:
        load(CorpusConfig(source=str(tmp_path / name)))
    assert hint in str(e.value)



@pytest.mark.parametrize("name, content", [("ok.csv", "a,b\n" + "x\0y,1\n" * 3 + "plain text,2\n" * 400),
                                           ("short.txt", "a short line with one NUL \0 in it, and no more\n")])
def test_a_few_nul_characters_are_data(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    c = load(CorpusConfig(source=str(tmp_path / name), columns=("a",) if name.endswith("csv") else (), records=True))
    assert "\0" in c.vocab.chars


def test_a_compressed_files_undecodable_byte_is_placed_in_its_decompressed_text(tmp_path):
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"ok ok ok\n\xff"))
    with pytest.raises(CharloomError, match=r"b.txt.gz: byte offset 9 of the decompressed text: bytes ff"):
        load(CorpusConfig(source=str(tmp_path / "b.txt.gz")))


def test_a_recursive_glob_does_not_walk_round_link_loops(tmp_path):
    """glob.glob(recursive=True) follows links to folders: two loops under a folder made it run for ever."""
    sub = tmp_path / "b" / "sub"
    sub.mkdir(parents=True)
    (sub / "x.txt").write_text("some text\n" * 50)
    (tmp_path / "b" / "top.txt").write_text("top\n" * 50)
    (tmp_path / "b" / ".hidden").mkdir()
    (tmp_path / "b" / ".hidden" / "h.txt").write_text("hidden\n")
    os.symlink("..", sub / "up")
    os.symlink(".", sub / "here")
    found = corpus_mod.resolve(CorpusConfig(source=str(tmp_path / "b" / "**" / "*.txt")))
    assert sorted(p.name for p in found.files) == ["top.txt", "x.txt"]
    assert corpus_mod.resolve(CorpusConfig(source=str(tmp_path / "b"))).files == found.files
    dotted = corpus_mod.resolve(CorpusConfig(source=str(tmp_path / "b" / ".hidden" / "*.txt")))
    assert [p.name for p in dotted.files] == ["h.txt"]


def test_a_folder_that_cannot_be_listed_is_named_not_passed_over(tmp_path, monkeypatch):
    (tmp_path / "d" / "locked").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("hi\n")
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(CharloomError, match=r"^.*/d/locked: cannot read \(Permission denied\)$"):
        corpus_mod.resolve(CorpusConfig(source=str(tmp_path / "d")))


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_a_device_or_pipe_is_named_as_such(tmp_path, source):
    if source == "fifo":
        os.mkfifo(tmp_path / "fifo")
        source = str(tmp_path / "fifo")
    with pytest.raises(CharloomError, match=r"not a file or a folder \(a device, a pipe"):
        corpus_mod.resolve(CorpusConfig(source=source))


@pytest.mark.parametrize("damage", ["no meta", "short ids", "short offsets", "empty meta", "vocabulary"])
def test_a_damaged_cache_entry_is_read_again_with_a_warning(tmp_path, damage):
    p = tmp_path / "rec.txt"
    p.write_text("\n".join(f"name {i}" for i in range(500)))
    cfg = CorpusConfig(source=str(p), records=True, cache_dir=str(tmp_path / "cache"))
    good = load(cfg)
    ids, offsets = np.array(good.ids), np.array(good.offsets)  # copies: the entry's files are about to change
    (entry,) = (tmp_path / "cache" / "ids").iterdir()
    if damage == "no meta":
        (entry / "meta.json").unlink()
    elif damage == "empty meta":
        (entry / "meta.json").write_text("")
    elif damage == "vocabulary":
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, "vocab": {**meta["vocab"], "chars": 5}}))
    else:
        name = "ids.npy" if damage == "short ids" else "offsets.npy"
        os.truncate(entry / name, 300)
    with pytest.warns(UserWarning, match="are damaged") if damage != "no meta" else contextlib.nullcontext():
        again = load(cfg)
    assert np.array_equal(again.ids, ids) and np.array_equal(again.offsets, offsets)
    assert again.vocab == good.vocab


def test_a_file_rewritten_with_its_old_mtime_is_read_again(tmp_path):
    """The hash of a file's bytes is remembered by its stat; a tool may write a file and set its mtime back,
    but not its ctime."""
    p = tmp_path / "t.txt"
    p.write_text("LINE of the text\n" * 2000)
    cfg = CorpusConfig(source=str(p), cache_dir=str(tmp_path / "cache"))
    assert "L" in load(cfg).vocab.chars
    st = p.stat()
    time.sleep(0.01)
    p.write_text("QQQQ of the text\n" * 2000)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "L" not in load(cfg).vocab.chars and "Q" in load(cfg).vocab.chars


def test_csv_columns_named_twice_or_by_digits_and_an_unclosed_quotes_line(tmp_path):
    (tmp_path / "dup.csv").write_text("title,title\nA,B\n")
    with pytest.raises(CharloomError, match=r"dup.csv: the header names columns 0, 1 'title'; choose one by index"):
        load(CorpusConfig(source=str(tmp_path / "dup.csv"), columns=("title",), records=True))
    assert records(tmp_path, "dup2.csv", "title,title\nA,B\n", columns=("1",), header=True) == ["B"]
    # digits are an index, even where the header names a column so (pandas writes ",0,1" headers)
    assert records(tmp_path, "pd.csv", ",0,1\n0,alpha,beta\n1,gamma,delta\n", columns=("1",),
                   header=True) == ["alpha", "gamma"]
    assert records(tmp_path, "ones.csv", "1,1,x\nu,w,z\n", columns=("1",), header=True) == ["w"]
    (tmp_path / "u.csv").write_text('title,body\n"unclosed,x\nC,z\nD,w\n')
    with pytest.raises(CharloomError, match=r"u.csv: line 2: a quoted field .* the file's last 3 lines"):
        load(CorpusConfig(source=str(tmp_path / "u.csv"), columns=("title",), records=True))


def test_records_are_counted_many_at_a_time_with_the_same_figures(tmp_path, monkeypatch):
    lines = [f"name{i % 97}{'é' if i % 5 == 0 else ''}" for i in range(20_000)]
    updates = []
    real = corpus_mod.CharCounter.update
    monkeypatch.setattr(corpus_mod.CharCounter, "update", lambda self, text: updates.append(len(text)) or
                        real(self, text))
    (tmp_path / "n.txt").write_text("\n".join(lines))
    c = load(CorpusConfig(source=str(tmp_path / "n.txt"), records=True))
    assert len(updates) < 10  # not one call per record
    assert [c.record(i) for i in range(c.num_records)] == lines
    want = {ch: "".join(lines).count(ch) for ch in set("".join(lines))}
    assert {c.vocab.itos[i]: int(n) for i, n in enumerate(c.counts()) if n} == want


def test_a_bundled_text_read_as_records_is_a_record_a_line_as_a_files_is():
    assert corpus_mod.resolve(CorpusConfig(source="shakespeare", records=True)).format == "lines"
    assert corpus_mod.resolve(CorpusConfig(source="shakespeare")).format == "text"
    assert corpus_mod.resolve(CorpusConfig(source="names", records=False)).format == "lines"


def test_a_glob_matches_what_python_s_glob_does_where_no_link_leads_to_a_folder(tmp_path, monkeypatch):
    import glob

    for f in ("top.txt", "a/x1.txt", "a/b/x2.txt", "a/b/c/y.py", "a/.h/z.txt", ".hid.txt", "e/b", "d/b2/q.txt"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("text\n")
    monkeypatch.chdir(tmp_path)
    for pattern in ("**", "**/*.txt", "*/**", "a/*/**", "**/b/**", ".*/**", "a/**/b/**/*.txt", "**.txt",
                    "[ab]*/**/x?.txt", "a/**/", "**/.h/*.txt", "a/.*/**/*.txt", "a/**/../*.txt", "a/**/.",
                    str(tmp_path / "**" / "*.py"), "*/*.txt", "a/*/**/*.py"):
        want = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        assert sorted(str(p) for p in corpus_mod._globbed(pattern) if p.is_file()) == want, pattern


def test_a_tar_archive_of_text_is_refused_by_its_runs_of_nul(tmp_path):
    import tarfile

    for i in range(5):
        (tmp_path / f"book{i}.txt").write_text("Call me Ishmael. Some years ago, never mind how long.\n" * 900)
    with tarfile.open(tmp_path / "books.tar", "w") as tar:
        for i in range(5):
            tar.add(tmp_path / f"book{i}.txt", arcname=f"book{i}.txt")
    with pytest.raises(CharloomError, match=r"books.tar: .* characters are NUL .*must be unpacked first"):
        load(CorpusConfig(source=str(tmp_path / "books.tar")))


@pytest.mark.parametrize("column", ["²", "--1", "1.5"])
def test_a_column_that_only_looks_like_a_number_is_a_name(tmp_path, column):
    (tmp_path / "t.csv").write_text("a,b\nx,y\n")
    with pytest.raises(CharloomError, match=rf"column {re.escape(repr(column))} not found \(columns: a, b\)"):
        load(CorpusConfig(source=str(tmp_path / "t.csv"), columns=(column,), records=True))


@pytest.mark.parametrize("options, flag", [(dict(records=True, separator=" | "), "--separator"),
                                           (dict(column_sep=" | "), "--column-sep")])
def test_an_option_for_another_kind_of_reading_is_refused_not_ignored(tmp_path, options, flag):
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    with pytest.raises(CharloomError, match=rf"^{flag}: joins .*t.txt is read as"):
        load(CorpusConfig(source=str(tmp_path / "t.txt"), **options))


def test_a_separator_on_a_corpus_that_is_records_by_default_is_refused():
    with pytest.raises(CharloomError, match=r"^--separator: joins .*; names is read as records \(give --no-records"):
        load(CorpusConfig(source="names", separator=" | "))
    assert load(CorpusConfig(source="names", records=False, separator=" | ")).offsets is None


@pytest.mark.parametrize("options, message", [(dict(extensions=(".py",)), "--ext: chooses the files of a folder"),
                                              (dict(columns=("x",)), "--column: only for CSV or TSV files"),
                                              (dict(field="t"), "--field: only for JSONL files")])
def test_an_option_for_files_on_a_bundled_corpus_is_refused(options, message):
    with pytest.raises(CharloomError, match=rf"^{message}"):
        load(CorpusConfig(source="names", **options))
