import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Every test caches encoded corpora in a fresh folder, never in the user's ~/.cache."""
    monkeypatch.setenv("CHARLOOM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
