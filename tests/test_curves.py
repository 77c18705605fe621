import json
import shutil
import subprocess
import sys

import pytest

import charloom
from charloom import curves
from charloom.errors import CharloomError

needs_plot = pytest.mark.skipif(not curves.available(), reason="the plot extra (matplotlib) is not installed")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics(folder):
    return [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def drawings(monkeypatch):
    """Every chart drawn, as the data `curves.draw` returned for it."""
    seen = []
    real = curves.draw

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(curves, "draw", spy)
    return seen


def write_rows(folder, rows, tail=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def rows_of(n, val=True):
    """Metrics rows as a run writes them: characters and seconds grow, scores fall."""
    return [{"step": 10 * (i + 1), "train_bpc": 4.0 - 0.1 * i, "val_bpc": (3.5 - 0.1 * i) if val else None,
             "characters": 640 * (i + 1), "seconds": 0.5 * (i + 1), "lr": 0.01} for i in range(n)]


@needs_plot
def test_a_run_draws_its_curves_from_its_metrics(tmp_path, text_file, tiny, drawings):
    import matplotlib.image

    out = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(out), **dict(tiny, max_steps=15))
    png = (out / "curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(out / "curves.png")
    assert image.shape[:2] == (450, 800) and image.std() > 0  # drawn, not blank
    rows = metrics(out)
    assert len(rows) == 3
    (drawn,) = drawings[-1]
    assert drawn.label == "run"
    assert drawn.train == ([r["characters"] for r in rows], [r["train_bpc"] for r in rows])
    assert drawn.val == ([r["characters"] for r in rows], [r["val_bpc"] for r in rows])
    assert drawn.seconds == ([r["characters"] for r in rows], [r["seconds"] for r in rows])
    assert drawn.full_val == rows[-1]["full_val_bpc"]


@needs_plot
def test_the_chart_is_redrawn_at_each_evaluation_with_its_row(tmp_path, text_file, tiny, drawings):
    evals = []

    def check(event):  # the user's callback runs after the chart: it must already show this row
        if event["event"] == "eval":
            evals.append(event)
            assert len(drawings) == len(evals)
            assert drawings[-1][0].train[0][-1] == event["characters"]

    charloom.train(source=str(text_file), out=str(tmp_path / "run"), callback=check, **dict(tiny, max_steps=20))
    assert len(evals) == 4
    assert [len(d[0].train[0]) for d in drawings] == [1, 2, 3, 4]


@needs_plot
def test_a_resumed_run_redraws_its_kept_rows_at_once(tmp_path, text_file, tiny, drawings):
    out = tmp_path / "run"
    charloom.train(source=str(text_file), out=str(out), **dict(tiny, max_steps=10))
    drawings.clear()
    evals = []
    charloom.train(source=str(text_file), out=str(out), resume=True, max_steps=15, callback=evals.append)
    assert [len(d[0].train[0]) for d in drawings] == [2, 3]  # at the start, then at its one evaluation
    assert drawings[-1][0].train[1] == [r["train_bpc"] for r in metrics(out)]


def test_a_run_over_an_old_one_never_shows_the_old_chart(tmp_path, text_file, tiny, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "curves.png").write_bytes(b"an older run's chart")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # so that this run draws none of its own
    charloom.train(source=str(text_file), out=str(out), **dict(tiny, max_steps=5))
    assert not (out / "curves.png").exists()


def test_without_matplotlib_training_completes_says_how_once_and_draws_nothing(tmp_path, text_file, tiny,
                                                                               monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    assert not curves.available()
    out = tmp_path / "run"
    result = charloom.train(source=str(text_file), out=str(out), **dict(tiny, max_steps=15, progress=True))
    assert result.progress.step == 15 and len(metrics(out)) == 3
    assert capsys.readouterr().out.count("pip install 'charloom[plot]'") == 1
    assert not (out / "curves.png").exists()
    with pytest.raises(CharloomError, match=r"charloom\[plot\]"):
        curves.plot_runs([out], tmp_path / "c.png")


def test_quiet_run_without_matplotlib_says_nothing_of_it(tmp_path, text_file, tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    charloom.train(source=str(text_file), out=str(tmp_path / "run"), **dict(tiny, max_steps=5))
    assert "charloom[plot]" not in capsys.readouterr().out


@needs_plot
def test_runs_are_labelled_by_the_settings_that_differ(tmp_path, text_file, tiny):
    opts = dict(tiny, max_steps=5)
    for name, extra in [("a", {}), ("b", {"hidden_size": 24}), ("c", {"seed": 7, "lr": 0.02})]:
        charloom.train(source=str(text_file), out=str(tmp_path / name), **{**opts, **extra})
    a, b, c = (tmp_path / n for n in "abc")
    assert curves.labels([a, b]) == ["hidden_size=16", "hidden_size=24"]
    drawn = curves.plot_runs([a, b], tmp_path / "both.png")
    assert [d.label for d in drawn] == ["hidden_size=16", "hidden_size=24"]
    assert [d.train[1] for d in drawn] == [[r["train_bpc"] for r in metrics(f)] for f in (a, b)]
    assert [d.seconds[1] for d in drawn] == [[r["seconds"] for r in metrics(f)] for f in (a, b)]
    # the batch order's seed and the weights' seed are the same setting where they agree
    assert curves.labels([a, c]) == ["seed=1337, lr=0.01", "seed=7, lr=0.02"]
    shutil.copytree(a, tmp_path / "again")
    assert curves.labels([a, tmp_path / "again"]) == ["a", "again"]  # nothing differs: the folders' names
    (tmp_path / "again" / "last.safetensors").unlink()
    assert curves.labels([b, tmp_path / "again"]) == ["b", "again"]  # no settings to compare with


@needs_plot
def test_a_cut_short_last_line_is_skipped(tmp_path):
    write_rows(tmp_path / "run", rows_of(3), tail='{"step": 40, "train_bpc": 3.6, "val_b')
    drawn = curves.plot_runs([tmp_path / "run"], tmp_path / "c.png")
    assert drawn[0].train == ([640.0, 1280.0, 1920.0], [4.0, 3.9, 3.8])
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("case", ["missing", "empty", "damaged inside", "only a cut line"])
def test_plot_runs_refuses_a_folder_without_metrics_on_one_line(tmp_path, case):
    run = tmp_path / "run"
    run.mkdir()
    if case == "empty":
        (run / "metrics.jsonl").write_text("")
    elif case == "damaged inside":
        write_rows(run, rows_of(1), tail="not json\n" + json.dumps(rows_of(2)[1]) + "\n")
    elif case == "only a cut line":
        write_rows(run, [], tail='{"step": 1')
    with pytest.raises(CharloomError) as e:
        curves.plot_runs([run], tmp_path / "c.png")
    message = str(e.value)
    assert str(run) in message and "\n" not in message
    if case == "damaged inside":
        assert "line 2" in message
    assert not (tmp_path / "c.png").exists()


@needs_plot
def test_a_run_without_validation_draws_train_only(tmp_path):
    write_rows(tmp_path / "run", rows_of(4, val=False))
    (drawn,) = curves.plot_runs([tmp_path / "run"], tmp_path / "c.png")
    assert drawn.train[1] == [4.0, 3.9, 3.8, 3.7] and drawn.val == ([], []) and drawn.full_val is None


def test_only_png_files_are_written(tmp_path):
    write_rows(tmp_path / "run", rows_of(2))
    with pytest.raises(CharloomError, match="c.jpg: .*png"):
        curves.plot_runs([tmp_path / "run"], tmp_path / "c.jpg")


def test_importing_curves_leaves_matplotlib_unloaded():
    code = "import sys, charloom.curves; print(any(m.split('.')[0] == 'matplotlib' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


NAMES = ["cost_$5_$6", "o\udcff"]  # two dollars read as a formula; a byte of argv that was not UTF-8


@needs_plot
@pytest.mark.parametrize("name", NAMES)
def test_a_run_whose_folder_name_is_not_plain_text_still_draws_its_chart(tmp_path, text_file, tiny, name):
    out = tmp_path / name
    charloom.train(source=str(text_file), out=str(out), **dict(tiny, max_steps=10))
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "model.safetensors").exists()


@needs_plot
def test_names_with_dollars_or_undecodable_bytes_are_drawn_as_plain_text(tmp_path):
    import matplotlib.figure
    import matplotlib.text

    shown = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        real(fig, *args, **kwargs)  # drawn first: a name that cannot be drawn fails here
        shown.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))

    found = [curves.curve(rows_of(3), name) for name in NAMES]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(matplotlib.figure.Figure, "savefig", spy)
        drawn = curves.draw(found, tmp_path / "both.png", title=" and ".join(NAMES))
        curves.draw(found[:1], tmp_path / "one.png", title=NAMES[0])
    assert [d.label for d in drawn] == NAMES
    assert {"cost_$5_$6", "o\ufffd", "cost_$5_$6 and o\ufffd"} <= set(shown)
    assert (tmp_path / "both.png").read_bytes().startswith(PNG_SIGNATURE)
