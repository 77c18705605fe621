import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Every test caches encoded corpora in a fresh folder, never in the user's ~/.cache."""
    monkeypatch.setenv("CHARLOOM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


TEXT = ("First Citizen: Before we proceed any further, hear me speak.\n"
        "All: Speak, speak.\n"
        "First Citizen: You are all resolved rather to die than to famish?\n"
        "All: Resolved. resolved.\n") * 12


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "play.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture
def tiny():
    """Options for a model and run small enough for a test: (batch, model, train) overrides."""
    return dict(batch_size=4, seq_len=16, hidden_size=16, num_layers=1, embedding=8, eval_every=5, eval_chars=0,
                sample_length=0, progress=False, warmup=2, lr=1e-2)
