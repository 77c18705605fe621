"""Training curves: bits per character against characters seen, with wall time, for one run or several.

A run folder's `metrics.jsonl` holds one row per evaluation; this module turns rows into series (plain
lists), names runs by the settings that tell them apart, and draws them into a PNG. matplotlib is the
`plot` extra: it is imported only when a chart is drawn, and only its Agg canvas is used (no display, and
no pyplot, so drawing never changes the backend of the program that called it nor keeps figures alive).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic, checkpoint
from .config import expand
from .errors import CharloomError

METRICS_FILE = "metrics.jsonl"
CHART_FILE = "curves.png"
INSTALL_HINT = "pip install 'charloom[plot]'"
SIZE = (8.0, 4.5)  # inches; at DPI, an 800 x 450 image that a README and a terminal viewer both show whole
DPI = 100
MAX_SETTINGS = 4  # a label names at most this many differing settings, then "+N more"
# settings that say where files go or what the terminal shows, not how the model learns
NOISE = frozenset({"out", "cache_dir", "resume", "overwrite", "progress", "threads", "sample_length",
                   "sample_temperatures", "sample_start", "vocab_size"})
CONFIG_ORDER = ("model", "corpus", "batch", "train")  # a label names model settings first
# lone surrogates: the bytes of a name that were not UTF-8, as Python's argv and os functions carry them
# (surrogateescape); no font can encode them
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def available() -> bool:
    """Whether matplotlib can be imported, i.e. whether charts can be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the series ----------------------------------------------------------------------------------------
@dataclass
class Curve:
    """One run's series as a chart draws them, one entry per metrics row."""

    label: str
    characters: list[int]  # characters seen so far: the x axis
    seconds: list[float]  # wall time so far: the second x axis
    train_bpc: list[float]  # training loss over the steps since the previous row
    val_bpc: list[float | None]  # None where the run has no validation split
    full_val_bpc: float | None = None  # the whole validation split, scored at the end of the run


@dataclass
class Drawn:
    """What a chart shows of one run, read back from the lines it plotted."""

    label: str
    train: tuple[list[float], list[float]]  # (characters seen, bpc)
    val: tuple[list[float], list[float]]  # (characters seen, bpc) of the rows with a validation score
    seconds: tuple[list[float], list[float]]  # (characters seen, wall seconds): what the time axis maps
    full_val: float | None = None
    colour: str = ""  # the run's colour, as matplotlib names it ("C0", "C1", ...)


def _row_ok(row: Any) -> bool:
    """A metrics row has an integer step, characters and seconds, and numbers for the scores it gives."""
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        return False
    val = row.get("val_bpc")
    return (_finite(row.get("characters"), int) and _finite(row.get("seconds")) and _finite(row.get("train_bpc"))
            and (val is None or _finite(val)))


def _finite(value: Any, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """A number a chart can place: of `kind`, not a bool, and finite as a float (JSON allows Infinity and
    integers of any length)."""
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder's metrics.jsonl. A last line cut short (a run killed mid-append, or one
    being written now) is skipped; an empty file, or a damaged line elsewhere, is refused naming the file."""
    folder = Path(folder)
    path = folder / METRICS_FILE
    if not path.is_file():
        raise CharloomError(f"{folder}: no {METRICS_FILE} (not a run folder, or a run before its first evaluation)")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise CharloomError(f"{path}: cannot read ({e.strerror or e})") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            row = None
        if _row_ok(row):
            rows.append(row)
        elif i < len(lines):
            raise CharloomError(f"{path}: line {i} is damaged (not a metrics row)")
    if not rows:
        raise CharloomError(f"{path}: holds no metrics rows (empty, or damaged)")
    return rows


def curve(rows: Sequence[dict[str, Any]], label: str) -> Curve:
    """The series of a run's metrics rows."""
    full = next((r["full_val_bpc"] for r in reversed(rows) if r.get("full_val_bpc") is not None), None)
    return Curve(label, [r["characters"] for r in rows], [float(r["seconds"]) for r in rows],
                 [float(r["train_bpc"]) for r in rows],
                 [None if r.get("val_bpc") is None else float(r["val_bpc"]) for r in rows], full)


def read_curve(folder: str | Path, label: str | None = None) -> Curve:
    """A run folder's series, labelled with the folder's name unless told otherwise."""
    return curve(read_rows(folder), label or Path(folder).resolve().name)


# ---- labels: what tells runs apart ---------------------------------------------------------------------
def settings(folder: str | Path) -> dict[str, Any] | None:
    """A run's settings, flat (`hidden_size`, `lr`, ...), from its resume file; None without a readable one.

    A name that two configs share (`seed`: the batch order's and the weights') stays one entry where both
    hold the same value, as `--seed` sets them, and becomes `batch.seed` and `train.seed` where they differ."""
    path = Path(folder) / checkpoint.RESUME_FILE
    if not path.is_file():
        return None
    try:
        configs = checkpoint.run_configs(path)
    except CharloomError:
        return None
    found: dict[str, dict[str, Any]] = {}  # field -> {config kind: value}
    for kind in CONFIG_ORDER:
        for k, v in configs.get(kind, {}).items():
            if k not in NOISE:
                found.setdefault(k, {})[kind] = v
    flat: dict[str, Any] = {}
    for k, by_kind in found.items():
        values = list(by_kind.values())
        if all(v == values[0] for v in values):
            flat[k] = values[0]
        else:
            flat.update({f"{kind}.{k}": v for kind, v in by_kind.items()})
    return flat


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    return str(value)


def labels(folders: Sequence[str | Path]) -> list[str]:
    """A label per run naming only the settings whose values differ between the runs ("hidden_size=256,
    lr=0.003"); the folder's name where nothing differs, where a run has no resume file, or where two
    labels would be the same."""
    names = [Path(f).resolve().name for f in folders]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run: the paths as given tell them apart
        names = [str(f) for f in folders]
    found = [settings(f) for f in folders]
    known = [s for s in found if s is not None]
    keys = list(dict.fromkeys(k for s in known for k in s))
    differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in known}) > 1]
    out = []
    for name, s in zip(names, found):
        if s is None or not differ:
            out.append(name)
            continue
        parts = [f"{k}={_shown(s.get(k))}" for k in differ]
        more = len(parts) - MAX_SETTINGS
        out.append(", ".join(parts[:MAX_SETTINGS]) + (f", +{more} more" if more > 0 else ""))
    if len(set(out)) < len(out):
        return names
    return out


# ---- drawing -------------------------------------------------------------------------------------------
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600)


def _time_ticks(axis: Any, span: float) -> None:
    """Wall-time ticks at round steps of a clock (every 30 s, 5 min, 1 h ...), about six over `span` seconds,
    written in the step's unit so that no tick reads as a rounded time: 90s, 15m, 2h."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    step = next((s for s in TIME_STEPS if span / s <= 7), 24 * 3600 * math.ceil(span / (7 * 24 * 3600)))
    unit, mark = (1, "s") if step < 60 else (60, "m") if step < 3600 else (3600, "h")
    axis.set_major_locator(MultipleLocator(step))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / unit:g}{mark}"))


def _time_axis(ax: Any, c: Curve) -> None:
    """Wall time on top of a single run's chart: characters map to seconds along the run (both only grow),
    from (0, 0), and at the run's overall rate beyond its ends, where the axis margins are."""
    import numpy as np

    chars = np.array([0.0, *c.characters], dtype=float)
    secs = np.array([0.0, *c.seconds], dtype=float)
    rate = chars[-1] / secs[-1] if secs[-1] > 0 else 1.0  # characters per second
    far = 10 * max(chars[-1], 1.0)  # far past the margins on either side
    chars = np.array([-far, *chars, chars[-1] + far])
    secs = np.array([-far / rate, *secs, secs[-1] + far / rate])
    top = ax.secondary_xaxis("top", functions=(lambda x: np.interp(x, chars, secs),
                                               lambda s: np.interp(s, secs, chars)))
    _time_ticks(top.xaxis, float(secs[-2]))
    top.set_xlabel("wall time")


def _legend(ax: Any, curves: Sequence[Curve], colours: list[str]) -> None:
    """Colours name the runs (when several); line styles name the splits."""
    from matplotlib.lines import Line2D

    grey = "0.35"
    handles = [Line2D([], [], color=col, lw=2, label=_printable(c.label)) for c, col in zip(curves, colours)]
    handles = handles if len(curves) > 1 else []  # one run: the title names it
    handles.append(Line2D([], [], color=grey, ls="--", label="train"))
    if any(v is not None for c in curves for v in c.val_bpc):
        handles.append(Line2D([], [], color=grey, ls="-", label="validation"))
    if any(c.full_val_bpc is not None for c in curves):
        handles.append(Line2D([], [], color=grey, ls="", marker="*", ms=9, label="whole validation split"))
    for text in ax.legend(handles=handles, fontsize=8, frameon=False).get_texts():
        _literal(text)


def _printable(name: str) -> str:
    """A run's or a corpus's name as a font can draw it: each byte that was not UTF-8 shown as U+FFFD."""
    return _SURROGATES.sub("\ufffd", name)


def _literal(text: Any) -> Any:
    """A matplotlib Text drawn as the characters it holds: never read as mathtext (two `$` in a folder's name
    would be parsed, and refused, as a formula) nor handed to TeX where the user's settings turn usetex on."""
    text.set_parse_math(False)
    text.set_usetex(False)
    return text


def _plot_run(ax: Any, c: Curve, colour: str, by_time: bool = False) -> dict[str, Any]:
    """One run's lines on `ax`, against characters seen or, by_time, against wall seconds."""
    x = c.seconds if by_time else c.characters
    mark = "." if len(x) < 20 else None  # a short run's points would vanish as a line
    lines: dict[str, Any] = {"train": ax.plot(x, c.train_bpc, ls="--", color=colour, marker=mark, lw=1.2)[0]}
    vx = [xi for xi, v in zip(x, c.val_bpc) if v is not None]
    if vx:
        vy = [v for v in c.val_bpc if v is not None]
        lines["val"] = ax.plot(vx, vy, ls="-", color=colour, marker=mark, lw=1.8)[0]
    if c.full_val_bpc is not None:
        lines["full"] = ax.plot([x[-1]], [c.full_val_bpc], ls="", marker="*", ms=10, color=colour)[0]
    return lines


def _xy(line: Any) -> tuple[list[float], list[float]]:
    return [float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()]


def _read_back(c: Curve, colour: str, lines: dict[str, Any], timed: dict[str, Any] | None) -> Drawn:
    """The data behind a run's plotted lines (not the series handed in), so a check of it is a check of the chart."""
    train = _xy(lines["train"])
    val = _xy(lines["val"]) if "val" in lines else ([], [])
    full = float(lines["full"].get_ydata()[0]) if "full" in lines else None
    seconds = (train[0], _xy(timed["train"])[0]) if timed else (train[0], list(c.seconds))
    return Drawn(c.label, train, val, seconds, full, colour)


def _upper(curves: Sequence[Curve]) -> float | None:
    """A y limit that keeps the early training rows (an untrained model scores ~log2(V) bits) from
    squashing the rest: the highest score, leaving out each run's first train row when it has a few more."""
    tops = [v for c in curves for v in [*c.train_bpc[1 if len(c.train_bpc) >= 4 else 0:], *c.val_bpc]
            if v is not None and math.isfinite(v)]
    return max(tops) * 1.08 if tops else None


def draw(curves: Sequence[Curve], out: str | Path, title: str | None = None) -> list[Drawn]:
    """One PNG of one or more runs, written atomically to `out`: bits per character against characters
    seen, each run a colour, train dashed and validation solid. One run gets wall time as a second axis on
    top; several runs, whose speeds differ, get a second panel against wall time. Returns what it drew."""
    out = Path(out)
    if not curves:
        raise CharloomError("plot: no runs to draw")
    if out.suffix.lower() != ".png":
        raise CharloomError(f"{out}: charts are PNG images; give a file name ending in .png")
    if not available():
        raise CharloomError(f"plot: drawing charts needs matplotlib: {INSTALL_HINT}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    several = len(curves) > 1
    fig = Figure(figsize=(SIZE[0] * (1.5 if several else 1), SIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    # fixed margins, room for the title and the time axis: a layout engine would double the drawing time
    fig.subplots_adjust(left=0.08 / (1.5 if several else 1), right=0.98, bottom=0.12, top=0.9 if several else 0.8,
                        wspace=0.06)
    axes = fig.subplots(1, 2 if several else 1, sharey=True, squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(curves))]
    drawn = []
    for c, colour in zip(curves, colours):
        lines = _plot_run(axes[0], c, colour)
        timed = _plot_run(axes[1], c, colour, by_time=True) if several else None
        drawn.append(_read_back(c, colour, lines, timed))
    axes[0].set_xlabel("characters seen")
    axes[0].xaxis.set_major_formatter(EngFormatter(sep=""))
    axes[0].set_ylabel("bits per character")
    if several:
        axes[1].set_xlabel("wall time")
        _time_ticks(axes[1].xaxis, max(c.seconds[-1] for c in curves))
    else:
        _time_axis(axes[0], curves[0])
    top = _upper(curves)
    if top is not None:
        axes[0].set_ylim(top=top)
    for ax, key in zip(axes, ("characters", "seconds")):
        right = max(getattr(c, key)[-1] for c in curves) * 1.04 or 1.0
        ax.set_xlim(0, right)  # a curve starts where training did, even when its first row is far from it
        ax.grid(alpha=0.3)
    _legend(axes[0], curves, colours)
    if title:
        _literal(fig.suptitle(_printable(title), fontsize=10))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic.write_bytes(out, buf.getvalue())
    return drawn


def plot_runs(paths: Sequence[str | Path], out: str | Path) -> list[Drawn]:
    """`charloom plot RUN [RUN ...] --out FILE`: the runs' curves on one chart, each labelled by the settings
    that differ between them. A folder without metrics is refused on one line naming it."""
    paths, out = [expand(p) for p in paths], expand(out)
    found = [read_curve(p) for p in paths]  # every folder checked before any drawing
    for c, label in zip(found, labels(paths)):
        c.label = label
    return draw(found, out, title=found[0].label if len(found) == 1 else None)  # one run: no legend names it


__all__ = ["CHART_FILE", "Curve", "Drawn", "INSTALL_HINT", "METRICS_FILE", "available", "curve", "draw", "labels",
           "plot_runs", "read_curve", "read_rows", "settings"]
