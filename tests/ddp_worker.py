"""Run under torchrun by test_distributed.py: train a tiny model, then save this process's weights."""

import os
import sys

from safetensors.torch import save_file

import charloom

folder, source = sys.argv[1], sys.argv[2]
losses = []
result = charloom.train(source=source, out=os.path.join(folder, "run"), order=sys.argv[3], max_steps=40,
                        batch_size=4, seq_len=16, hidden_size=32, num_layers=2, embedding=8, dropout=0.1,
                        eval_every=10, eval_chars=0, sample_length=0, progress=False, warmup=2, lr=1e-2,
                        callback=lambda e: losses.append(e["loss"]) if e["event"] == "step" else None)
rank = os.environ["RANK"]
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
          os.path.join(folder, f"rank{rank}.safetensors"), metadata={"losses": ",".join(map(str, losses))})
