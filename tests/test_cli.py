import json
import os
import subprocess
import sys

import pytest

from charloom.cli import main


def run(*args, cwd=None):
    """The real console entry in a fresh process: exit code, stdout, stderr."""
    p = subprocess.run([sys.executable, "-m", "charloom", *args], capture_output=True, text=True, cwd=cwd,
                       env=os.environ.copy(), timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_corpora_lists_both_with_sizes(capsys):
    assert main(["corpora"]) == 0
    out = capsys.readouterr().out
    assert "shakespeare" in out and "5,057,239" in out
    assert "names" in out and "5,163" in out


def test_corpus_info_on_names_reads_records_without_flag(capsys):
    assert main(["corpus-info", "names", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "records" and info["records"] == 5163
    assert info["train"] + info["validation"] == 5163
    assert info["vocab_size"] == info["vocab_characters"] + 4


def test_corpus_info_csv_columns_by_name(tmp_path, capsys):
    p = tmp_path / "news.csv"
    p.write_text('label,title,description\n3,"Wall St. Bears","Short-sellers are back."\n4,"Comets","Planets."\n')
    assert main(["corpus-info", str(p), "--column", "title", "--column", "description", "--records",
                 "--json", "--batch-size", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 2
    assert info["characters"] == len("Wall St. Bears Short-sellers are back.") + len("Comets Planets.")


def test_separator_flag_understands_escapes(tmp_path, capsys):
    p = tmp_path / "t.txt"
    p.write_text("a\nb\n")
    # two lines read as records, then joined into one stream by a typed "\n\n": a, newline, newline, b
    assert main(["corpus-info", str(p), "--format", "lines", "--separator", "\\n\\n", "--json",
                 "--batch-size", "1", "--seq-len", "2", "--val-fraction", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["characters"] == 4


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\n\xff")
    code, out, err = run("corpus-info", str(p))
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "bad.txt: byte offset 3" in err


@pytest.mark.parametrize("args, needle", [
    (["corpus-info", "no_such_corpus"], "no_such_corpus: no such file, folder or bundled corpus"),
    (["corpus-info", "names", "--batch-size", "0"], "batch_size: must be positive"),
    (["corpus-info", "names", "--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
    (["corpus-info", "names", "--order", "sideways"], "argument --order: invalid choice"),
    (["train", "names", "--sample-temperature", "hot"], "argument --sample-temperature: 'hot' is not a number"),
])
def test_clear_errors_for_bad_flags(args, needle):
    code, out, err = run(*args)
    assert code == 2 and needle in err and "Traceback" not in err


def test_too_short_corpus_from_the_cli(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("tiny corpus")
    code, _, err = run("corpus-info", str(p), "--seq-len", "64")
    assert code == 2 and "fewer than seq_len + 1 = 65" in err


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "charloom")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "corpus-info" in p.stdout
