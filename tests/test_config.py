import json
import re

import pytest

from charloom.config import (BatchConfig, CorpusConfig, EvalConfig, ModelConfig, SampleConfig, SampleOptions,
                             ServeConfig, TrainConfig)
from charloom.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    for cls in (CorpusConfig, BatchConfig):
        cfg = cls()
        assert cls.from_dict(cfg.to_dict()) == cfg


def test_unknown_option_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) batchsize \(known: .*batch_size"):
        BatchConfig.from_dict({"batchsize": 3})


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": "64"}, "batch_size: '64' is not an integer"),
    ({"batch_size": True}, "batch_size: True is not an integer"),
    ({"batch_size": -1}, r"batch_size: must be 0 \(chosen\) or positive, got -1"),
    ({"val_fraction": 1.0}, r"val_fraction: must be in \[0, 1\)"),
    ({"order": "random"}, "order: 'random' is not one of 'shuffle', 'contiguous'"),
    ({"val_fraction": float("nan")}, "val_fraction: nan is not a finite number"),
    ({"max_record_len": 2**63}, r"max_record_len: at most 1,099,511,627,776, got 9,223,372,036,854,775,808"),
])
def test_ill_typed_or_out_of_range_options_fail_loudly(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BatchConfig(**kwargs)


def test_the_heads_hidden_layer_is_none_as_wide_or_a_width():
    assert ModelConfig(hidden_size=96).head_width == 96  # -1, the default: as wide as the recurrent layer
    assert ModelConfig(hidden_size=96, head_hidden=0).head_width == 0
    assert ModelConfig(hidden_size=96, head_hidden=40).head_width == 40
    for bad in (-2, 2**16 + 1):  # beyond the widest a model file holds: refused before a run, not at its save
        with pytest.raises(ConfigError, match=r"head_hidden: must be -1 \(as wide as the recurrent layer\), 0 \(none\) "
                                              rf"or from 1 to 65,536, got {bad}"):
            ModelConfig(head_hidden=bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"early_pieces": -1}, r"early_pieces: must be in \[0, 64\], got -1"),
    ({"early_pieces": 10**9}, r"early_pieces: must be in \[0, 64\]"),
    ({"late_pieces": -1}, r"late_pieces: must be in \[0, 64\], got -1"),
    ({"late_pieces": 65}, r"late_pieces: must be in \[0, 64\], got 65"),
    ({"early_share": 1.5}, r"early_share: must be in \[0, 1\], got 1.5"),
    ({"early_share": float("nan")}, "early_share: nan is not a finite number"),
])
def test_the_early_pieces_are_bounded(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_samples_too_long_to_show_are_refused_before_a_run_not_at_its_first_evaluation():
    assert TrainConfig(sample_length=100_000).sample_length == 100_000
    with pytest.raises(ConfigError, match=r"^sample_length: at most 100,000 characters per sample shown, got 100,001$"):
        TrainConfig(sample_length=100_001)


def test_an_empty_stop_string_is_refused_where_it_was_dropped():
    from charloom.config import SampleOptions

    assert SampleOptions(stop=("\n\n", "!")).stop == ("\n\n", "!")
    with pytest.raises(ConfigError, match=r"^stop\[1\]: an empty stop string; give one of one character or more$"):
        SampleOptions(stop=("!", ""))


@pytest.mark.parametrize("host", ["a b", "", "http://box.lan", "box.lan/", "*.example.com", "user@box.lan",
                                  "box.lan:port", "[fd00::7", ":80", "bücher.example"])
def test_an_allowed_host_no_browser_sends_is_refused(host):
    """A Host header is a name or address with a port or not: any other value never matches one, so the server
    would start and answer every request to that name 403."""
    from charloom.config import ServeConfig

    assert ServeConfig(allow_hosts=("box.lan", "example.org:8443", "[fd00::7]", "[fd00::7]:80", "fd00::7", "*",
                                    "192.168.1.5", "my_box.local.", "XN--BCHER-KVA.example")).allow_hosts
    with pytest.raises(ConfigError, match=rf"^allow_hosts\[0\]: '{re.escape(host)}' is not a Host header"):
        ServeConfig(allow_hosts=(host,))


@pytest.mark.parametrize("origin", ["example.com", "http://example.com/app", "localhost:3000", "https://*.example.com",
                                    "https://example.com:443", "http://example.com:80", "http://user@example.com",
                                    "file:///home/page.html"])
def test_a_cors_origin_no_browser_sends_is_refused(origin):
    """A browser's Origin is scheme://host[:port]: a value without a scheme, or with a path, never matches one, so
    the server started and every cross-origin call still failed."""
    from charloom.config import ServeConfig

    assert ServeConfig(cors_origins=("https://example.com", "http://localhost:3000/", "*", "null",
                                     "https://example.com:8443", "chrome-extension://abcdef")).cors_origins
    with pytest.raises(ConfigError, match=rf"^cors_origins\[0\]: '{re.escape(origin)}' is not a web origin"):
        ServeConfig(cors_origins=(origin,))


def test_lists_become_tuples_and_items_are_checked():
    assert CorpusConfig(columns=["a", "1"]).columns == ("a", "1")
    with pytest.raises(ConfigError, match=r"columns\[1\]: 2 is not a string"):
        CorpusConfig(columns=["a", 2])
    assert BatchConfig(val_fraction=0).val_fraction == 0.0  # an int is a fine number


def test_every_field_is_documented():
    import dataclasses

    for cls in (CorpusConfig, BatchConfig, ModelConfig, TrainConfig, SampleConfig, EvalConfig, ServeConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_text_that_is_not_text_is_refused_but_a_path_may_hold_a_name_that_is_not_utf8():
    """Bytes that are not UTF-8 reach options as lone surrogates (from argv, or JSON's escapes): in a start text or
    separator they would fail at a save or a sample minutes later; in a file name they are legal on Linux."""
    with pytest.raises(ConfigError, match=r"^separator: U\+DCFF at position 0 is a lone surrogate, not a character"):
        CorpusConfig(separator="\udcff")
    with pytest.raises(ConfigError, match=r"^sample_start: U\+DCFF at position 2 is a lone surrogate"):
        TrainConfig(sample_start="ab\udcff")
    with pytest.raises(ConfigError, match=r"^stop\[1\]: U\+D800 at position 0 is a lone surrogate"):
        SampleOptions(stop=("ok", "\ud800"))
    assert CorpusConfig(source="book\udcff.txt").source == "book\udcff.txt"
    assert TrainConfig(out="runs/o\udcff").out == "runs/o\udcff"


@pytest.mark.parametrize("kwargs, message", [
    ({"extensions": ("",)}, "ext: '' is not a file extension"),
    ({"extensions": (".py", "a/b")}, "ext: 'a/b' is not a file extension"),
])
def test_file_extensions_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CorpusConfig(**kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: ModelConfig(forget_bias=1e39), r"^forget_bias: 1e\+39 is beyond the range of a float32"),
    (lambda: EvalConfig(adapt_lr=1e300), r"^adapt_lr: 1e\+300 is beyond the range of a float32"),
    (lambda: TrainConfig(lr=11.0), r"^lr: must be positive and at most 10"),
])
def test_numbers_past_what_a_float32_tensor_or_a_step_can_take_are_refused(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("kwargs", [dict(text="book.txt"), dict(score_chars=5)])
def test_export_options_for_the_int8_score_need_int8(kwargs):
    from charloom.config import ExportConfig

    at_default = {k: getattr(ExportConfig, k) for k in kwargs}
    for cfg in (ExportConfig(**kwargs), ExportConfig(**at_default).marked(kwargs)):  # away, or given at the default
        with pytest.raises(ConfigError, match=rf"^{next(iter(kwargs))}: only means something with --int8"):
            cfg.check_unused()
    ExportConfig(**at_default).check_unused()  # an object's defaults ask nothing
    ExportConfig(int8=True, **kwargs).marked(kwargs).check_unused()


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_layers=257), r"^num_layers: 257 is more than a model file may hold \(256\)"),
    (dict(hidden_size=2**16 + 1), r"^hidden_size: 65,537 is more than a model file may hold \(65,536\)"),
    (dict(embedding=2**16 + 1), r"^embedding: 65,537 is more than a model file may hold \(65,536\)"),
])
def test_a_model_no_file_could_hold_is_refused_before_a_run_trains_it(tmp_path, kwargs, message):
    import charloom
    from charloom.config import MAX_LAYERS, MAX_WIDTH

    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)
    with pytest.raises(ConfigError, match=message):  # as a run gets it: before any step, nothing written
        charloom.train(source="names", out=str(tmp_path / "run"), max_steps=1, **kwargs)
    assert not (tmp_path / "run").exists()
    name = next(iter(kwargs))
    most = MAX_LAYERS if name == "num_layers" else MAX_WIDTH
    assert ModelConfig(**{name: most}).validate() is None  # the largest a file holds is allowed


def test_numpy_numbers_are_numbers_and_stay_plain_python_ones():
    """A value computed with NumPy (a temperature from a sweep, a length from an array) is taken as its Python
    number, so that the config's dict is plain JSON; a NumPy bool is no number, as a Python one is not."""
    import numpy as np

    opts = SampleOptions(temperature=np.float32(0.5), length=np.int64(5), seed=np.uint64(3))
    assert (opts.temperature, opts.length, opts.seed) == (0.5, 5, 3)
    assert [type(v) for v in (opts.temperature, opts.length, opts.seed)] == [float, int, int]
    assert json.loads(json.dumps(opts.to_dict()))["length"] == 5
    with pytest.raises(ConfigError, match=r"^temperature: np.True_ is not a number"):
        SampleOptions(temperature=np.bool_(True))
    with pytest.raises(ConfigError, match=r"^temperature: nan is not a finite number"):
        SampleOptions(temperature=np.float32("nan"))
    with pytest.raises(ConfigError, match=r"^length: np.float64\(5.0\) is not an integer"):
        SampleOptions(length=np.float64(5.0))


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    """Path("") is ".": a run would write its files over the current folder's, a corpus would read every file
    under it, and a model would be looked for there."""
    import charloom
    from charloom.errors import CharloomError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^out: must name a run folder"):
        charloom.train(source="names", out="", max_steps=1)
    with pytest.raises(ConfigError, match=r"^source: must name a corpus, a file, a folder or a glob"):
        CorpusConfig(source=" ")
    with pytest.raises(CharloomError, match=r"^no model file or run folder named \(an empty path\)"):
        charloom.load("")
    assert list(tmp_path.iterdir()) == []
