"""The notebooks' method, re-implemented from their description, as the baseline of the benchmarks.

Training: the corpus is a list of texts; each text becomes one batch of all its len-100 windows, built
by a Python loop that encodes every window; a one-hot LSTM(64) with a linear head; Adam at 0.01.
Generation: `generate_soft`, one network call per character from a Python loop, `torch.multinomial` on
`exp(logits / t)`, autograd left on.
"""

from __future__ import annotations

import torch

NCHARS = 100


class LSTMGenerator(torch.nn.Module):
    def __init__(self, vocab_size: int, hidden_dim: int = 64):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = torch.nn.LSTM(vocab_size, hidden_dim, batch_first=True)
        self.fc = torch.nn.Linear(hidden_dim, vocab_size)

    def forward(self, x, s=None):
        x = torch.nn.functional.one_hot(x, self.vocab_size).to(torch.float32)
        x, s = self.rnn(x, s)
        return self.fc(x), s


def get_batch(s: str, vocab, nchars: int = NCHARS):
    def enc(t):
        return torch.LongTensor([vocab.stoi[c] for c in t])

    ins = torch.zeros(len(s) - nchars, nchars, dtype=torch.long)
    outs = torch.zeros(len(s) - nchars, nchars, dtype=torch.long)
    for i in range(len(s) - nchars):
        ins[i] = enc(s[i:i + nchars])
        outs[i] = enc(s[i + 1:i + nchars + 1])
    return ins, outs


def texts_of(text: str, size: int = 240) -> list[str]:
    """The corpus as news-item-sized texts (about an AG News item each)."""
    return [text[i:i + size] for i in range(0, len(text) - size, size)]


def train_step(net, optimizer, text: str, vocab) -> tuple[int, int]:
    """One notebook training step on one text; returns (corpus characters, positions)."""
    text_in, text_out = get_batch(text, vocab)
    optimizer.zero_grad()
    out, s = net(text_in)
    loss = torch.nn.functional.cross_entropy(out.view(-1, net.vocab_size), text_out.flatten())
    loss.backward()
    optimizer.step()
    return len(text), text_in.numel()


def generate_soft(net, vocab, size: int = 100, start: str = "today ", temperature: float = 1.0) -> str:
    chars = list(start)
    out, s = net(torch.tensor([vocab.encode(start)]))
    for _ in range(size):
        out_dist = out[0][-1].div(temperature).exp()
        nc = torch.multinomial(out_dist, 1)[0]
        chars.append(vocab.itos[nc])
        out, s = net(nc.view(1, -1), s)
    return "".join(chars)
