"""Is the label used? Per-label bpc given the right label, a wrong one and none, on AG-News-shaped headlines.

    python bench/labels_bench.py [--minutes 2] [--rows 20000]

No labelled corpus is bundled, so the headlines are made here: four classes (World, Sports, Business,
Sci/Tech) whose words and shapes overlap in part (shared verbs, numbers, places), written as AG News is,
`class,title` per CSV row. A model trains on one file with `--label-column 0 --label-map` and is scored
with `charloom eval` on a second file drawn with another seed: each label's records given their own label,
given each wrong one (the mean), and given none.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from charloom import checkpoint  # noqa: E402
from charloom.sampling import Generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABEL_MAP = "1=World,2=Sports,3=Business,4=Sci/Tech"
NAMES = {int(raw): name for raw, name in (pair.split("=") for pair in LABEL_MAP.split(","))}  # class -> label
SHARED = {"verbs": ["says", "plans", "faces", "wins", "loses", "backs", "warns on", "eyes"],
          "places": ["US", "China", "Japan", "Europe", "India", "Brazil", "London", "Tokyo"]}
WORDS = {  # per class: subjects, objects
    1: (["UN", "EU leaders", "Iraq", "Sudan rebels", "Kenya", "Israel", "Russia", "Iran"],
        ["peace talks", "border dispute", "nuclear deal", "refugee crisis", "election result", "cease-fire"]),
    2: (["Yankees", "Lakers", "Arsenal", "Eagles", "Red Sox", "Chelsea", "Federer", "Woods"],
        ["title game", "playoff spot", "home opener", "coach's contract", "injury list", "final round"]),
    3: (["Oil prices", "Stocks", "Dollar", "IBM", "Wal-Mart", "Fed", "Airbus", "Intel"],
        ["quarterly profit", "rate hike", "job cuts", "merger talks", "sales forecast", "weak demand"]),
    4: (["NASA", "Microsoft", "Apple", "Nokia", "Google", "Sony", "Linux", "IBM researchers"],
        ["space probe", "software patch", "new iPod", "search engine", "chip design", "virus outbreak"]),
}


def headline(cls: int, r: random.Random) -> str:
    subjects, objects = WORDS[cls]
    shape = r.randrange(3)
    if shape == 0:
        return f"{r.choice(subjects)} {r.choice(SHARED['verbs'])} {r.choice(objects)}"
    if shape == 1:
        return f"{r.choice(SHARED['places'])}: {r.choice(subjects)} {r.choice(SHARED['verbs'])} {r.choice(objects)}"
    return f"{r.choice(subjects)} {r.choice(SHARED['verbs'])} {r.choice(objects)} in {r.choice(SHARED['places'])}"


def write_csv(path: Path, rows: int, seed: int) -> None:
    r = random.Random(seed)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows((c, headline(c, r)) for c in (r.randint(1, 4) for _ in range(rows)))


def charloom(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "charloom", *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr)
    return p.stdout


def on_label(run: Path, n: int = 100) -> dict[bool, tuple[float, int]]:
    """Of n samples per label (temperature 0.8), with the n-gram and with the network alone: the share that use
    words of their own class and none of another's, and how many begin with a space."""
    gen = Generator.from_checkpoint(checkpoint.load(run))
    out = {}
    for ngram in (True, False):
        good = lead = 0
        for cls, name in NAMES.items():
            mine = WORDS[cls][0] + WORDS[cls][1]
            theirs = [w for c, (s, o) in WORDS.items() if c != cls for w in s + o if w not in mine]
            for t in gen.generate(start="", length=60, n=n, seed=7, temperature=0.8, label=name, ngram=ngram):
                good += any(w in t for w in mine) and not any(w in t for w in theirs)
                lead += t.startswith(" ")
        out[ngram] = good / (n * len(NAMES)), lead
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--rows", type=int, default=20000)
    args = ap.parse_args()
    run = ROOT / "runs" / "labels-bench"
    labelled = ["--records", "--column", "1", "--label-column", "0", "--label-map", LABEL_MAP]
    with tempfile.TemporaryDirectory() as tmp:
        train_csv, test_csv = Path(tmp) / "train.csv", Path(tmp) / "test.csv"
        write_csv(train_csv, args.rows, seed=1)
        write_csv(test_csv, 2000, seed=2)
        charloom("train", str(train_csv), *labelled, "--out", str(run), "--max-time", f"{args.minutes}m",
                 "--overwrite", "--no-progress", "--sample-length", "0")
        figures = json.loads(charloom("eval", "--checkpoint", str(run), str(test_csv), *labelled, "--json"))
        samples = {name: charloom("sample", "--checkpoint", str(run), "--label", name, "--num-samples", "3",
                                  "--seed", "1", "--temperature", "0.5").split("\n")[1:4]
                   for name in NAMES.values()}
    kept = on_label(run)
    precision = json.loads(charloom("info", str(run), "--json", "--samples", "0"))["training"]["precision"]
    rows = [report.row(r["label"], f"{r['records']:,}", f"{r['bpc']:.3f}", f"{r['wrong_bpc']:.3f}",
                       f"{r['no_label_bpc']:.3f}", f"{r['wrong_bpc'] - r['bpc']:+.3f}") for r in figures["labels"]]
    body = "\n".join([
        "## Labels: is the label used?",
        "",
        f"Command: `python bench/labels_bench.py --minutes {args.minutes:g} --rows {args.rows}`.",
        f"Machine: {report.machine()}.",
        f"{args.rows:,} synthetic AG-News-shaped headlines (four classes sharing verbs and places, see the script) "
        f"train a model with the default settings for {args.minutes:g} minutes (precision {precision}; `--records --column 1 --label-column "
        f"0 --label-map \"{LABEL_MAP}\"`); `charloom eval` scores 2,000 other headlines of the same kind. Overall "
        f"{figures['bpc']:.3f} bpc.",
        "",
        *report.table(["label", "records", "own label (bpc)", "a wrong label (mean)", "no label", "wrong - own"],
                      rows),
        "",
        "Samples for each label (`charloom sample --label NAME --num-samples 3 --seed 1 --temperature 0.5`):",
        "",
        *[f"- {name}: " + " / ".join(f"`{t}`" for t in texts) for name, texts in samples.items()],
        "",
        "Of 100 samples per label (`--temperature 0.8`), those that use words of their own class and none of "
        f"another's: **{kept[True][0]:.1%}** as saved (the network mixed with its n-gram; {kept[True][1]} begin "
        f"with a space), {kept[False][0]:.1%} by the network alone ({kept[False][1]} with a space).",
    ])
    report.write_section("labels", body)
    print(body)


if __name__ == "__main__":
    main()
