"""Hostile and damaged model files: each is refused with one line naming the file, cheaply, before anything
large is allocated or read.

Most files here are forged as an attacker would make them: any tensors and header fields, with both digests
recomputed to match, so each test reaches the check it is about rather than stopping at the checksum."""

import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import charloom
from charloom import checkpoint
from charloom.config import ModelConfig, state_shapes
from charloom.errors import CharloomError
from charloom.model import CharRNN
from charloom.vocab import Vocab

TEXT = "hello world"


@pytest.fixture
def good(tmp_path):
    """A freshly initialised one-layer LSTM saved as a model file: (path, model, vocab)."""
    vocab = Vocab.build(TEXT)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="lstm", num_layers=1, hidden_size=8, embedding=4, vocab_size=len(vocab)))
    path = checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False, info={"val_bpc": 2.5})
    return path, model, vocab


def split(blob: bytes) -> tuple[dict, bytes]:
    """(header as JSON, tensor bytes) of a safetensors file."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def forge(path, tensors: dict, meta: dict):
    """Write `tensors` with header fields `meta`, and the two digests that match them."""
    head, data = split(st_save(tensors, metadata=meta))
    table = {k: v for k, v in head.items() if k != "__metadata__"}
    plain = hashlib.sha256(data).hexdigest()
    path.write_bytes(st_save(tensors, metadata={**meta, checkpoint.DIGEST: plain,
                                                checkpoint.FULL_DIGEST: checkpoint._full_digest(meta, table, plain)}))
    return path


def contents(path) -> tuple[dict, dict]:
    """(tensors, header fields without the digests) of a model file."""
    blob = path.read_bytes()
    meta = split(blob)[0]["__metadata__"]
    tensors = {k: v.clone() for k, v in st_load(blob).items()}  # writable: they come from immutable bytes
    return tensors, {k: v for k, v in meta.items() if k not in (checkpoint.DIGEST, checkpoint.FULL_DIGEST)}


def hostile(good_path, change, name="hostile.safetensors"):
    """The good file with `change(meta, tensors)` applied, digests recomputed."""
    tensors, meta = contents(good_path)
    change(meta, tensors)
    return forge(good_path.parent / name, tensors, meta)


def refused(path, needle: str = "") -> str:
    with pytest.raises(CharloomError) as e:
        checkpoint.load(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and needle in message, message
    return message


def with_config(**changes):
    def change(meta, tensors):
        meta["config"] = json.dumps({**json.loads(meta["config"]), **changes})
    return change


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- sizes in the header --------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, needle", [
    (dict(hidden_size=20000), "weights do not fit the config (tensor 'model.head.weight' is [12, 8]"),
    (dict(hidden_size=30000), "weights do not fit the config"),
    (dict(hidden_size=10**9), "hidden_size: 1,000,000,000 is more than a model file may hold"),
    (dict(num_layers=10**6), "num_layers: 1,000,000 is more than a model file may hold"),
    (dict(num_layers=200), "num_layers 200 needs more weight tensors than the file's"),
    (dict(embedding=10**5), "embedding: 100,000 is more than"),
    (dict(grams=4), "no tensor 'model.grams.0.weight'"),
    (dict(grams=4, gram_buckets=10**9), "gram_buckets: must be from 1 to 4,194,304"),
])
def test_a_config_larger_than_its_tensors_is_refused_before_the_model_is_built(good, changes, needle):
    path, _, _ = good
    refused(hostile(path, with_config(**changes)), needle)


def test_a_file_written_before_hashed_contexts_loads_without_them(tmp_path):
    vocab = Vocab.build(TEXT)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, grams=3, gram_buckets=16, attention=0,
                                vocab_size=len(vocab)))
    tensors, meta = contents(checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False))
    # the config and tensors as files held them before the option existed: no grams, no tables (they load as the
    # default, so this fails the day --grams is on by default without a reading of such files as grams 0)
    meta["config"] = json.dumps({k: v for k, v in json.loads(meta["config"]).items()
                                 if k not in ("grams", "gram_buckets")})
    ck = checkpoint.load(forge(tmp_path / "older.safetensors", {k: v for k, v in tensors.items()
                                                               if ".grams." not in k}, meta))
    assert ck.config.grams == 0 and ck.model.state_names == ("h", "c")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ck.model.state_dict().items())


def test_a_file_from_before_the_heads_hidden_layer_loads_with_a_linear_head(tmp_path):
    vocab = Vocab.build(TEXT)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, head_hidden=0, vocab_size=len(vocab)))
    tensors, meta = contents(checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False))
    # the config as files held it before the option existed; the default (a hidden layer) would make two more
    # tensors than such a file holds
    meta["config"] = json.dumps({k: v for k, v in json.loads(meta["config"]).items() if k != "head_hidden"})
    ck = checkpoint.load(forge(tmp_path / "older.safetensors", tensors, meta))
    assert ck.config.head_hidden == 0 and ck.model.readout is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ck.model.state_dict().items())
    assert ModelConfig().head_hidden == -1  # what a new run gets, so the reading above is what keeps such files


def test_a_file_from_before_the_attention_head_loads_without_one(tmp_path):
    vocab = Vocab.build(TEXT)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, attention=0, vocab_size=len(vocab)))
    tensors, meta = contents(checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False))
    meta["config"] = json.dumps({k: v for k, v in json.loads(meta["config"]).items() if k not in ("attention", "memory")})
    ck = checkpoint.load(forge(tmp_path / "older.safetensors", tensors, meta))
    assert ck.config.attention == 0 and ck.model.recall is None and ck.model.state_names == ("h", "c")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ck.model.state_dict().items())
    assert ModelConfig().attention > 0  # what a new run gets, so the reading above is what keeps such files


def test_a_file_from_before_shifted_keys_loads_with_keys_from_each_position(tmp_path):
    vocab = Vocab.build(TEXT)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=4, attention=3, shifted_keys=False, vocab_size=len(vocab)))
    tensors, meta = contents(checkpoint.save(tmp_path / "model.safetensors", model, vocab, records=False))
    meta["config"] = json.dumps({k: v for k, v in json.loads(meta["config"]).items() if k != "shifted_keys"})
    ck = checkpoint.load(forge(tmp_path / "older.safetensors", tensors, meta))
    assert not ck.config.shifted_keys and ck.model.recall.before is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ck.model.state_dict().items())
    assert ModelConfig().shifted_keys  # what a new run gets, so the reading above is what keeps such files


def test_a_tensor_the_config_does_not_make_is_refused_by_name(good):
    path, _, _ = good
    refused(hostile(path, lambda m, t: t.update({"model.rnn.weight_hh_l1": torch.zeros(32, 8)})),
            "unexpected tensor 'model.rnn.weight_hh_l1'")
    refused(hostile(path, lambda m, t: t.pop("model.head.bias")), "no tensor 'model.head.bias'")
    long = refused(hostile(path, lambda m, t: t.update({"model." + "x" * 100000: torch.zeros(1)})), "unexpected")
    assert len(long) <= checkpoint.MAX_MESSAGE + 3  # a name from the file is quoted, not all of it


# ---- JSON that Python's parser cannot take ------------------------------------------------------------------
@pytest.mark.parametrize("field, text", [
    ("config", nested(100000)),
    ("vocab", nested(100000)),
    ("info", nested(100000)),
    ("extra", nested(100000)),
    ("records", nested(5000)),
    ("config", '{"hidden_size": ' + "9" * 5000 + "}"),
    ("info", '{"step": ' + "9" * 5000 + "}"),
    ("vocab", '{"format": "charloom-vocab", "version": ' + "1" * 5000 + "}"),
])
def test_deep_json_and_huge_integers_are_a_damaged_file(good, field, text):
    path, _, _ = good
    refused(hostile(path, lambda m, t: m.update({field: text})), "damaged model file")


def test_deep_json_in_the_header_itself_is_not_a_model_file(good):
    path, _, _ = good
    head, data = split(path.read_bytes())
    head["junk"] = "@"
    raw = json.dumps(head).replace('"@"', nested(100000)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    refused(path, "not a charloom model file")


def test_a_header_of_too_many_values_is_refused_before_it_is_parsed(good):
    path, _, _ = good
    head, data = split(path.read_bytes())
    head["junk"] = [0] * (checkpoint.MAX_VALUES + 1)
    raw = json.dumps(head, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    refused(path, "JSON values")
    path.write_bytes(struct.pack("<Q", checkpoint.MAX_HEADER + 8) + b" " * (checkpoint.MAX_HEADER + 8))
    refused(path, "at most")


# ---- the vocabulary --------------------------------------------------------------------------------------------
def vocab_of(chars: str, **fields):
    def change(meta, tensors):
        meta["vocab"] = json.dumps({**json.loads(meta["vocab"]), "chars": chars, **fields})
    return change


def test_a_vocabulary_of_lone_surrogates_is_refused(good):
    path, _, vocab = good
    lone = "".join(chr(0xD800 + i) for i in range(len(vocab.chars)))  # as many ids, none of them printable
    refused(hostile(path, vocab_of(lone)), "U+D800, a lone surrogate")
    with pytest.raises(CharloomError, match="lone surrogate"):  # nor is such a file written
        checkpoint.encode(CharRNN(ModelConfig(hidden_size=4, vocab_size=5)), Vocab(["\udc80"]), records=False)


@pytest.mark.parametrize("label", ["\x1b[2J\x1b[31mNEG", "p\u2028os", "a\tb", "x\ud800"])
def test_a_label_that_would_print_as_a_terminal_command_is_refused(good, label):
    """Labels are printed as they are (info, errors that list them): escape codes, tabs, line or paragraph
    separators and lone surrogates in one are refused, from a file as from training text."""
    path, _, vocab = good

    def labelled(meta, tensors):
        vocab_of("".join(vocab.chars), labels=["fine", label])(meta, tensors)
        meta["records"] = "true"
    refused(hostile(path, labelled), "control character")
    with pytest.raises(CharloomError, match="control character"):
        Vocab(["a"], labels=["fine", label])


def test_labels_in_a_model_of_continuous_text_are_refused(good):
    """Labels are given after each record's <bos>: training makes no labelled model of continuous text, and a file
    that says it is one is damaged."""
    path, _, vocab = good
    refused(hostile(path, vocab_of("".join(vocab.chars), labels=["fine"])), "only records take, and records is false")


def test_a_vocabulary_repeating_a_character_or_a_key_is_refused(good):
    path, _, vocab = good
    refused(hostile(path, vocab_of("l" * len(vocab.chars))), "repeats a character")

    def two_keys(meta, tensors):
        meta["vocab"] = meta["vocab"][:-1] + ', "chars": ' + json.dumps("".join(vocab.chars)[::-1]) + "}"
    refused(hostile(path, two_keys), "a key is repeated")


def test_a_vocabulary_field_of_the_wrong_kind_is_refused(good):
    path, _, vocab = good
    chars = "".join(vocab.chars)
    refused(hostile(path, vocab_of(chars, lower="yes")), "field 'lower' must be true or false")
    refused(hostile(path, vocab_of(chars, casing=True)), "unknown field 'casing'")
    refused(hostile(path, vocab_of(chars, unknown={"a": 1})), "field 'unknown' is {'a': 1}, not one of unk, error")


# ---- the weights ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.float16, torch.float64, torch.bool, torch.int64,
                                   torch.bfloat16])
def test_weights_of_another_dtype_are_refused_by_name(good, dtype):
    path, _, _ = good
    bad = hostile(path, lambda m, t: t.update({"model.head.weight": t["model.head.weight"].to(dtype)}))
    refused(bad, "tensor 'model.head.weight' is ")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_weights_that_are_not_finite_are_refused_by_name(good, value):
    path, _, _ = good
    refused(hostile(path, lambda m, t: t["model.rnn.weight_hh_l0"].fill_(value)),
            "tensor 'model.rnn.weight_hh_l0' holds NaN or infinite values")


# ---- what is not a model file at all, and what costs to refuse it ---------------------------------------------
WORKER = r"""
import json, resource, sys, time
from charloom import checkpoint
from charloom.errors import CharloomError

checkpoint.load(sys.argv[1])  # a good file first, so what loading itself needs is in the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for path in sys.argv[2:]:
    t0 = time.perf_counter()
    try:
        checkpoint.load(path)
        out[path] = ["loaded", 0.0]
    except CharloomError as e:
        out[path] = [str(e), time.perf_counter() - t0]
print(json.dumps({"refusals": out, "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")
def test_files_that_would_block_or_never_end_are_refused_fast_in_little_memory(good):
    """Run in a child process: before these checks a FIFO blocked forever and /dev/zero or a sparse file was
    read until memory ran out; an oversized config allocated gigabytes."""
    path, _, _ = good
    fifo = path.parent / "fifo.safetensors"
    os.mkfifo(fifo)
    sparse = path.parent / "sparse.safetensors"
    sparse.write_bytes(path.read_bytes())
    os.truncate(sparse, 64 * 2**30)  # a valid small header, then 64 GB of holes
    big = [hostile(path, with_config(hidden_size=h), f"h{h}.safetensors") for h in (20000, 30000)]
    kinds = {str(fifo): "not a regular file", "/dev/zero": "not a regular file",
             str(sparse): "its header describes", **{str(b): "weights do not fit the config" for b in big}}
    p = subprocess.run([sys.executable, "-c", WORKER, str(path), *kinds], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    for where, (message, seconds) in result["refusals"].items():
        assert kinds[where] in message and where in message and "\n" not in message, message
        assert seconds < 2, (where, seconds)
    assert result["grew_mb"] < 100, result


# ---- the header's meaning is covered by a digest -------------------------------------------------------------
def field_spans(blob: bytes, names=("config", "vocab", "records")) -> list[int]:
    """File offsets of every byte of the named header fields' values."""
    (n,) = struct.unpack("<Q", blob[:8])
    raw = blob[8:8 + n].decode()
    assert raw.isascii()  # so string offsets are byte offsets
    spans = []
    for name in names:
        start = raw.index(f'"{name}":"') + len(name) + 4
        end = json.decoder.scanstring(raw, start)[1] - 1
        spans += range(8 + start, 8 + end)
    return spans


def test_header_bit_flips_that_change_what_it_means_are_refused(good):
    path, model, vocab = good
    blob = path.read_bytes()
    flipped = path.parent / "flipped.safetensors"
    for at in field_spans(blob):
        for bit in range(8):
            damaged = bytearray(blob)
            damaged[at] ^= 1 << bit
            flipped.write_bytes(bytes(damaged))
            try:
                ck = checkpoint.load(flipped)
            except CharloomError:
                continue
            # a flip that parses to the same meaning (the case of a hex digit in a \\u escape) may load
            assert (ck.vocab, ck.config, ck.records, ck.info) == (vocab, model.cfg, False, {"val_bpc": 2.5}), at


def test_a_field_changed_after_saving_is_refused_though_the_tensor_checksum_holds(good):
    path, _, vocab = good
    tensors, meta = contents(path)
    old = split(path.read_bytes())[0]["__metadata__"]
    meta["vocab"] = meta["vocab"].replace("".join(vocab.chars), "abcdefgh")
    forged = path.parent / "forged.safetensors"
    forged.write_bytes(st_save(tensors, metadata={**meta, checkpoint.DIGEST: old[checkpoint.DIGEST],
                                                  checkpoint.FULL_DIGEST: old[checkpoint.FULL_DIGEST]}))
    refused(forged, "checksum mismatch: the header is damaged")


def test_a_file_from_before_the_header_digest_still_loads(good):
    """Files written before `sha256_all` existed load on the tensor checksum and the checks of every field; such a
    file with a field they never held is refused (it could be a new file whose digest name lost a bit)."""
    path, model, vocab = good
    tensors, meta = contents(path)
    older = path.parent / "older.safetensors"
    plain = hashlib.sha256(split(st_save(tensors, metadata=meta))[1]).hexdigest()
    older.write_bytes(st_save(tensors, metadata={**meta, checkpoint.DIGEST: plain}))  # as charloom wrote until now
    ck = checkpoint.load(older)
    assert ck.vocab == vocab and ck.config == model.cfg
    assert all(torch.equal(ck.model.state_dict()[k], v) for k, v in model.state_dict().items())
    head, data = split(older.read_bytes())
    head["__metadata__"]["sha256_alm"] = "0" * 64
    raw = json.dumps(head).encode()
    older.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    refused(older, "unknown field 'sha256_alm'")


# ---- resume files ----------------------------------------------------------------------------------------------
@pytest.fixture
def resume(good):
    """A resume file for the good model: one process, an AdamW step taken, a carried state of batch 2."""
    path, model, vocab = good
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 3, dtype=torch.long))[0].sum().backward()
    opt.step()
    carry = {f"carry.{i}": torch.full((first, 2, last), float(i == 1))  # h 0, c 1, the attention's memory 0
             for i, (first, last) in enumerate(state_shapes(model.cfg).values())}
    ranks = [{"rng.torch": torch.get_rng_state(), **carry}]
    configs = {"corpus": {"source": "x.txt"}, "batch": {"batch_size": 2}, "train": {"lr": 1e-3}}
    run = checkpoint.RunState(checkpoint.Progress(step=3), configs, opt.state_dict(), ranks,
                              {k: v + 1 for k, v in model.state_dict().items()}, averaged=2)
    path = checkpoint.save_run(path.parent / "last.safetensors", model, vocab, run, records=False)
    checkpoint.load_run(path)  # as written, it passes
    return path


def extra(**changes):
    def change(meta, tensors):
        meta["extra"] = json.dumps({**json.loads(meta["extra"]), **changes})
    return change


@pytest.mark.parametrize("damage, needle", [
    (lambda m, t: m.update(extra="5"), "extra: not a JSON object"),
    (lambda m, t: m.update(extra='"progress optimizer corpus batch train"'), "extra: not a JSON object"),
    (extra(optimizer=[{"params": [0]}]), "the parameter groups do not number"),
    (lambda m, t: t.update({"optim.0.exp_avg": t["optim.0.exp_avg"].to(torch.int8)}), "optimizer state of parameter 0"),
    (lambda m, t: t["optim.1.exp_avg"].fill_(float("nan")), "optimizer state of parameter 1"),
    (lambda m, t: t["optim.2.exp_avg_sq"].fill_(-1.0), "optimizer state of parameter 2"),
    (lambda m, t: t["optim.0.step"].fill_(float("inf")), "optimizer state of parameter 0"),
    (lambda m, t: t.update({"carry.0.r0": torch.zeros(1, 3, 8)}), "the carried state of process 0"),
    (lambda m, t: t.update({"carry.1.r0": torch.zeros(1, 2, 8, dtype=torch.float64)}), "the carried state"),
    (lambda m, t: t["carry.1.r0"].fill_(float("nan")), "the carried state of process 0"),
    (lambda m, t: t.update({"rng.cuda.r0": torch.zeros(4)}), "the CUDA RNG state of process 0"),
    (lambda m, t: t["weights.head.bias"].fill_(float("nan")), "the trained weights do not fit"),
    (lambda m, t: t.update({"weights.head.bias": t["weights.head.bias"].half()}), "the trained weights do not fit"),
    (lambda m, t: m.update(extra=m["extra"][:-1] + ', "x": ' + nested(100000) + "}"), "damaged model file (extra"),
])
def test_a_damaged_resume_header_is_one_line(resume, damage, needle):
    bad = hostile(resume, damage, "last-bad.safetensors")
    with pytest.raises(CharloomError) as e:
        checkpoint.load_run(bad)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(bad) in str(e.value)


@pytest.mark.parametrize("grams", [0, 3])
def test_the_resume_files_training_writes_pass_every_check(tmp_path, text_file, tiny, grams):
    """Contiguous order carries a state (with hashed contexts, the recent ids too), the weight average keeps the
    trained weights: both are checked."""
    tiny = {**tiny, "grams": grams, **({"gram_buckets": 32} if grams else {})}  # sized tables only where there are
    out = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(out), order="contiguous", max_steps=4, **tiny)
    ck, run = checkpoint.load_run(out / "last.safetensors")
    assert run.carry(0)[0].shape == (1, tiny["batch_size"], tiny["hidden_size"]) and run.trained
    assert len(run.carry(0)) == len(ck.model.state_names)
    carried = dict(zip(ck.model.state_names, run.carry(0)))
    assert carried["memory"].shape == (ck.config.memory, tiny["batch_size"], 2 * ck.config.attention + 1)
    if grams:
        assert carried["recent"].shape == (1, tiny["batch_size"], 2)
    result = charloom.train(source=str(text_file), out=str(out), order="contiguous", max_steps=6, resume=True, **tiny)
    assert result.progress.step == 6


def test_a_carried_recent_id_outside_the_vocabulary_is_refused(tmp_path, text_file, tiny):
    out = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(out), order="contiguous", max_steps=2,
                   **{**tiny, "grams": 3, "gram_buckets": 32})
    bad = hostile(out / "last.safetensors", lambda m, t: t["carry.2.r0"].fill_(1e6), "last-bad.safetensors")
    with pytest.raises(CharloomError, match="the carried state of process 0"):
        checkpoint.load_run(bad)


# ---- through the command line ----------------------------------------------------------------------------------
def test_sample_refuses_a_hostile_file_with_one_line_and_no_traceback(good):
    path, _, _ = good
    bad = hostile(path, lambda m, t: t["model.head.weight"].fill_(float("nan")))
    p = subprocess.run([sys.executable, "-m", "charloom", "sample", "--checkpoint", str(bad), "--length", "5"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("charloom: error: ") and str(bad) in p.stderr
    assert "Traceback" not in p.stderr
