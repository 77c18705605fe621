import pytest

from charloom.config import (BatchConfig, CorpusConfig, EvalConfig, ModelConfig, SampleConfig, ServeConfig,
                             TrainConfig)
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
    ({"batch_size": 0}, "batch_size: must be positive"),
    ({"val_fraction": 1.0}, r"val_fraction: must be in \[0, 1\)"),
    ({"order": "random"}, "order: 'random' is not one of 'shuffle', 'contiguous'"),
    ({"val_fraction": float("nan")}, "val_fraction: nan is not a finite number"),
])
def test_ill_typed_or_out_of_range_options_fail_loudly(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BatchConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"early_pieces": -1}, r"early_pieces: must be in \[0, 64\], got -1"),
    ({"early_pieces": 10**9}, r"early_pieces: must be in \[0, 64\]"),
    ({"early_share": 1.5}, r"early_share: must be in \[0, 1\], got 1.5"),
    ({"early_share": float("nan")}, "early_share: nan is not a finite number"),
])
def test_the_early_pieces_are_bounded(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


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
