"""Server load benchmark: N concurrent clients on loopback for a bounded time against a small model.

    python bench/serve_bench.py [--seconds 10] [--clients 1 4 8]

Starts `charloom serve` (max 4 concurrent generations) on a free loopback port with a 1x128 LSTM and the
defaults' head (random weights: speed does not depend on training), then for each client count runs that many
threads, each sending `POST /v1/generate` (200 characters, temperature 0.8) back to back until the time
is up. A 429 (over the concurrency limit) is counted apart from failures.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from charloom import CharRNN, ModelConfig, checkpoint  # noqa: E402
from charloom.runinfo import head_words  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

LENGTH = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(url: str, until: float, out: list, seed: int) -> None:
    with httpx.Client(timeout=60) as c:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            try:
                r = c.post(url, json={"start": "ROMEO.", "length": LENGTH, "temperature": 0.8, "seed": seed})
                status = r.status_code
                chars = sum(len(s["text"]) for s in r.json()["samples"]) if status == 200 else 0
            except httpx.HTTPError:
                status, chars = -1, 0
            out.append((status, time.perf_counter() - t0, chars))
            seed += 1
            if status == 429:
                time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Vocab.build("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n")
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(num_layers=1, hidden_size=128, embedding=32, vocab_size=len(vocab)))
        path = checkpoint.save(Path(tmp) / "model.safetensors", model, vocab, records=False)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "charloom", "serve", "--checkpoint", str(path), "--port",
                                   str(port), "--max-concurrent", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(base + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rows = []
            for n in args.clients:
                results: list = []
                until = time.perf_counter() + args.seconds
                threads = [threading.Thread(target=client, args=(base + "/v1/generate", until, results, 1000 * i))
                           for i in range(n)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                ok = [r for r in results if r[0] == 200]
                lat = sorted(r[1] * 1000 for r in ok)
                q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
                refused = sum(r[0] == 429 for r in results)
                failed = sum(r[0] not in (200, 429) for r in results)
                rows.append(report.row(n, f"{len(ok) / wall:.1f}", f"{sum(r[2] for r in ok) / wall:,.0f}",
                                       f"{q[49]:.0f}", f"{q[94]:.0f}", f"{q[98]:.0f}", refused, failed))
                print(rows[-1], flush=True)
        finally:
            server.terminate()
            server.wait(10)
    c = model.cfg
    head = head_words(c.head_width, c.attention, c.memory, c.shifted_keys)
    body = "\n".join([
        "## Server under load",
        "",
        f"Command: `python bench/serve_bench.py --seconds {args.seconds:g} --clients {' '.join(map(str, args.clients))}`.",
        f"Machine: {report.machine()}; client threads and the server share its {os.cpu_count()} cores.",
        f"Each request: {LENGTH} characters from a 1x128 LSTM with the defaults' head ({head}), "
        "not streamed; the server runs at most 4 generations at "
        "once and answers 429 beyond that (counted apart: they are the limit working, not failures).",
        "",
        *report.table(["clients", "requests/s", "characters/s", "p50 ms", "p95 ms", "p99 ms", "429s", "failed"], rows),
    ])
    report.write_section("serve", body)
    print(body)


if __name__ == "__main__":
    main()
