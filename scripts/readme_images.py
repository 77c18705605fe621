"""Draw the README's images from a short run on the bundled Shakespeare: its training curves
(docs/curves.png) and a passage coloured by the probability the model gave each character
(docs/coloured.png, as `charloom eval --color` shows it on a terminal).

    python scripts/readme_images.py            # trains into runs/readme (about a minute), or reuses it
    python scripts/readme_images.py --fresh    # trains again over runs/readme

Needs the plot extra: pip install 'charloom[plot]'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import charloom
from charloom import checkpoint, curves

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "readme"
IMAGE = ROOT / "docs" / "curves.png"
COLOURED = ROOT / "docs" / "coloured.png"
PASSAGE = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
           "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n")
# the terminal's 256-colour codes of insight.SHADES as RGB, so the picture shows what a terminal shows
XTERM = {196: "#ff0000", 208: "#ff8700", 220: "#ffd700", 150: "#afd787", None: "#d0d0d0"}


def draw_coloured(reading, out: Path) -> None:
    """The passage in a monospaced font on a dark background, each character in its probability's colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from charloom.insight import colour

    lines = reading.text.split("\n")
    width, height = max(map(len, lines)) + 2, len(lines) + 1
    fig = Figure(figsize=(width * 0.11, height * 0.24), facecolor="#1e1e1e")
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    row = col = 0
    for ch, p in zip(reading.text, reading.probs.tolist()):
        if ch == "\n":
            row, col = row + 1, 0
            continue
        ax.text(col + 1, row + 1, ch, family="monospace", fontsize=11, color=XTERM[colour(p)], va="baseline")
        col += 1
    FigureCanvasAgg(fig).print_png(str(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time", default="1m", help="training time, as --max-time takes it (default: 1m)")
    p.add_argument("--fresh", action="store_true", help="train again even where runs/readme holds a run")
    args = p.parse_args()
    if not curves.available():
        raise SystemExit(f"this script draws with matplotlib: {curves.INSTALL_HINT}")
    done = (RUN / checkpoint.RESUME_FILE).exists() and (RUN / curves.METRICS_FILE).exists()
    if args.fresh or not done:
        # eval_every 100: a point every few seconds on a laptop CPU, so a one-minute curve has a shape
        charloom.train(source="shakespeare", out=str(RUN), max_time=args.time, hidden_size=256, eval_every=100,
                       sample_length=0, overwrite=True, seed=1)
    ck, _ = checkpoint.load_run(RUN / checkpoint.RESUME_FILE)
    m = ck.config
    title = f"{m.cell.upper()} {m.num_layers}x{m.hidden_size} on the bundled Shakespeare"
    curves.draw([curves.read_curve(RUN, label="shakespeare")], IMAGE, title=title)
    from charloom.insight import read
    from charloom.sampling import Generator

    reading = read(Generator.from_checkpoint(checkpoint.load(RUN)), PASSAGE)
    draw_coloured(reading, COLOURED)
    print(f"wrote {IMAGE.relative_to(ROOT)} and {COLOURED.relative_to(ROOT)} from {RUN.relative_to(ROOT)} "
          f"(the passage reads at {reading.bpc:.2f} bpc)")


if __name__ == "__main__":
    main()
