"""Run under torchrun by test_distributed.py: train a tiny model, then save this process's weights.

Arguments: folder, source, order, and a budget: "steps" (40 steps), "clock" (a time budget, with the second
process's clock running four times as fast as the first's, so the processes disagree on how much is used) or
"stop" (40 steps, but the second process's callback asks to stop after step 3)."""

import os
import sys
import time

from safetensors.torch import save_file

import charloom

folder, source, order = sys.argv[1:4]
budget = sys.argv[4] if len(sys.argv) > 4 else "steps"
rank = os.environ["RANK"]
if budget == "clock" and rank == "1":
    real, start = time.perf_counter, time.perf_counter()
    time.perf_counter = lambda: start + 4 * (real() - start)
limits = dict(max_time="2s", early_share=0.3) if budget == "clock" else dict(max_steps=40)
losses = []


def callback(event):
    if event["event"] == "step":
        losses.append(event["loss"])
        return budget == "stop" and rank == "1" and event["step"] == 3


result = charloom.train(source=source, out=os.path.join(folder, "run"), order=order, **limits,
                        batch_size=4, seq_len=16, early_pieces=4, hidden_size=32, num_layers=2, embedding=8,
                        dropout=0.1,
                        eval_every=10, eval_chars=0, sample_length=0, progress=False, warmup=2, lr=1e-2,
                        callback=callback)
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
          os.path.join(folder, f"rank{rank}.safetensors"),
          metadata={"losses": ",".join(map(str, losses)), "steps": str(result.progress.step),
                    "stopped_by": result.stopped_by})
