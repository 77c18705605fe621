import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charloom.errors import CharloomError
from charloom.vocab import BOS, EOS, PAD, UNK, CharCounter, Vocab


def test_ids_are_sorted_and_specials_come_first():
    v = Vocab.build("hello world")
    assert v.itos[:4] == (PAD, BOS, EOS, UNK)
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
    assert list(v.chars) == sorted(set("hello world"))
    assert v.encode(" ") == [4]  # space sorts before every letter


def test_same_text_gives_same_ids_whatever_the_order_seen():
    a = Vocab.build(["zebra", "apple"])
    b = Vocab.build(["apple", "zebra"])
    assert a.itos == b.itos
    assert a.encode("zap") == b.encode("zap")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=200))
def test_encode_decode_round_trips_any_unicode(text):
    v = Vocab.build(text)
    ids = v.encode(text)
    assert len(ids) == len(text)
    assert v.decode(ids) == text
    assert Vocab.from_json(v.to_json()).decode(ids) == text


@pytest.mark.parametrize("text", [
    "line one\r\nline two\r\n",          # Windows line ends stay two characters
    "cafe\u0301 caf\u00e9",               # combining acute vs precomposed: both kept as written
    "👩‍🚀 emoji 🎉 with ZWJ",              # astral plane and zero-width joiner
    "中文字符和日本語のテキスト",             # CJK
    "\ud800 lone surrogate",             # legal in a Python str
])
def test_hard_unicode_round_trips(text):
    v = Vocab.build(text)
    assert v.decode(v.encode(text)) == text
    assert Vocab.from_json(v.to_json()) == v


def test_unknown_character_maps_to_unk_by_default():
    v = Vocab.build("abc")
    assert v.encode("abz") == [v.stoi["a"], v.stoi["b"], v.unk_id]
    assert v.unknown_count("abzz") == 2


def test_unknown_character_error_names_character_and_position():
    v = Vocab.build("abc", unknown="error")
    with pytest.raises(CharloomError, match=r"'z' \(U\+007A\) at position 2"):
        v.encode("abzc")


def test_unknown_in_empty_vocab_is_unk_not_keyerror():
    v = Vocab([])
    assert v.encode("xy") == [v.unk_id, v.unk_id]


def test_decode_drops_or_shows_specials():
    v = Vocab.build("ab")
    ids = [v.bos_id, v.stoi["a"], v.stoi["b"], v.eos_id, v.pad_id]
    assert v.decode(ids) == "ab"
    assert v.decode(ids, specials=True) == "<bos>ab<eos><pad>"
    assert v.decode(torch.tensor(ids)) == "ab"


def test_decode_out_of_range_id_is_clear():
    v = Vocab.build("ab")
    with pytest.raises(CharloomError, match="id 99 is outside the vocabulary"):
        v.decode([99])


def test_literal_special_token_text_is_plain_characters():
    v = Vocab.build("<bos> is text")
    ids = v.encode("<bos>")
    assert v.bos_id not in ids and len(ids) == 5


def test_lowercase_and_nfc_options():
    v = Vocab.build("ABC cafe\u0301", lower=True, normalize="NFC")
    assert "A" not in v and "a" in v
    assert "\u00e9" in v and "\u0301" not in v
    assert v.encode("Caf\u00e9") == v.encode("cafe\u0301")  # start texts are read the way the corpus was
    assert Vocab.from_json(v.to_json()).lower is True


def test_min_count_leaves_rare_characters_out():
    v = Vocab.build("aaab", min_count=2)
    assert "a" in v and "b" not in v


def test_tensor_encoding():
    v = Vocab.build("abc")
    t = v.encode_tensor("cab")
    assert t.dtype == torch.int64 and t.tolist() == v.encode("cab")


def test_json_refuses_bad_files():
    v = Vocab.build("abc")
    d = json.loads(v.to_json())
    with pytest.raises(CharloomError, match="version 99"):
        Vocab.from_dict({**d, "version": 99})
    with pytest.raises(CharloomError, match="not a charloom vocabulary"):
        Vocab.from_dict({"chars": "abc"})
    with pytest.raises(CharloomError, match="repeats a character"):
        Vocab.from_dict({**d, "chars": "aab"})
    with pytest.raises(CharloomError, match="not valid JSON"):
        Vocab.from_json("{")


def test_char_counter_matches_python_counter():
    from collections import Counter

    texts = ["hello 🌍", "wörld\r\n", "🌍🌍 中"]
    c = CharCounter()
    for t in texts:
        c.update(t)
    assert c.counts() == dict(Counter("".join(texts)))
    assert c.total() == sum(map(len, texts))


def test_vectorised_encode_equals_dictionary_lookup():
    rng = np.random.default_rng(0)
    alphabet = list("abcdefgh \n🌍中é")
    text = "".join(rng.choice(alphabet, 5000))
    v = Vocab.build(text[:2500] + "abcdefgh")
    expected = [v.stoi.get(ch, v.unk_id) for ch in text]
    assert v.encode(text) == expected
