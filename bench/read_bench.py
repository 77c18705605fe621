"""Reading a text's logits: peak memory and time, a piece at a time against one call.

    python bench/read_bench.py

What `eval --color`, `insight.read` and the server's /v1/score do: every character's logits of a text, read from
a zero state. `Generator.read_logits` reads a memory's worth of characters per call, the state carried; one call
over the whole text (as it read before) makes an attention head's scores (1, T, M + T), which grow with the
text's length squared. The model is the 10-minute defaults' shape (LSTM 1 x 608, an attention head 64 wide over
256 outputs, a 608-unit head layer) with random weights, fp32, the network alone (no n-gram): memory and time do
not depend on training. Each figure comes from a fresh process: its peak resident memory less its resident
memory before the read, and the read's wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

SHAPE = dict(num_layers=1, hidden_size=608, embedding=64, attention=64, memory=256, vocab_size=90)


def measure(way: str, chars: int) -> dict:
    """One read in this process: {"mb": peak growth, "seconds": wall time}."""
    import numpy as np
    import torch

    from charloom import CharRNN, Generator, ModelConfig
    from charloom.vocab import Vocab

    torch.manual_seed(0)
    vocab = Vocab.build("".join(chr(33 + i) for i in range(SHAPE["vocab_size"] - 4)))
    model = CharRNN(ModelConfig(**SHAPE)).eval()
    ids = np.random.default_rng(0).integers(4, len(vocab), chars)
    gen = Generator(model, vocab)
    gen.read_logits(ids[:300], ngram=False)  # kernels chosen and warmed before the figure
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if way == "pieces":
        gen.read_logits(ids, ngram=False)
    else:
        with torch.inference_mode():
            model(torch.from_numpy(ids)[None])
    seconds = time.perf_counter() - t0
    return {"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # way chars: measure in this process
    ap.add_argument("--lengths", type=int, nargs="+", default=[2_000, 8_000, 20_000])
    ap.add_argument("--one-call-up-to", type=int, default=8_000, help="longest text read in one call")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    rows = []
    for chars in args.lengths:
        for way in ("pieces", "one call"):
            if way == "one call" and chars > args.one_call_up_to:
                continue
            out = subprocess.run([sys.executable, __file__, "--one", way, str(chars)], capture_output=True,
                                 text=True, check=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            rows.append(report.row(f"{chars:,}", way, f"{got['mb']:,.0f}", f"{got['seconds']:.2f}"))
            print(rows[-1], flush=True)
    body = "\n".join([
        "## Reading a text's logits: a piece at a time against one call",
        "",
        f"Command: `python bench/read_bench.py`. Machine: {report.machine()}, fp32. A random model of the 10-minute defaults' shape (LSTM 1 x 608, "
        f"attention head 64 wide over 256 outputs); what `eval --color` and /v1/score read. Peak resident memory "
        f"gained in a fresh process, and wall time.",
        "",
        *report.table(["characters", "read", "peak MB gained", "seconds"], rows),
    ])
    report.write_section("read", body)


if __name__ == "__main__":
    main()
