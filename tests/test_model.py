import pytest
import torch
from torch import nn

from charloom.batching import pad_records
from charloom.cells import CELLS
from charloom.config import ModelConfig
from charloom.errors import ConfigError
from charloom.model import CharRNN, context_rows, detach, forward_flops

pytestmark = pytest.mark.kernel
V = 11
# the reference for each cell type: PyTorch's one-step module, and its gate blocks G (weights are G*H tall);
# a new cell type in charloom.cells is one more entry here
REFERENCE = {"lstm": (nn.LSTMCell, 4), "gru": (nn.GRUCell, 3), "rnn": (nn.RNNCell, 1)}


def make(cell="lstm", layers=2, hidden=8, embedding=0, dropout=0.0, seed=0, head=-1):
    """The network alone (no hashed context inputs nor attention head: those have their own tests below)."""
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(cell=cell, num_layers=layers, hidden_size=hidden, embedding=embedding,
                               dropout=dropout, grams=0, head_hidden=head, attention=0, vocab_size=V))


def reference_logits(model, ids):
    """The same network as a hand-written loop over nn.*Cell, one time step and one layer at a time."""
    cfg = model.cfg
    x = model.embed(ids) if cfg.embedding else nn.functional.one_hot(ids, V).float()
    B, T, _ = x.shape
    for layer in range(cfg.num_layers):
        cell = REFERENCE[cfg.cell][0](x.shape[-1], cfg.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(model.rnn, f"{name}_l{layer}"))
        zeros = tuple(torch.zeros(B, cfg.hidden_size) for _ in model.cell.state)  # (h, c) or (h,)
        state = zeros if len(zeros) > 1 else zeros[0]
        outs = []
        for t in range(T):
            state = cell(x[:, t], state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        x = torch.stack(outs, 1)
    if cfg.head_width:  # the head's hidden layer: x W1^T + b1, through the exact (erf) GELU
        w1, b1 = model.readout[0].weight, model.readout[0].bias
        x = x @ w1.T + b1
        x = 0.5 * x * (1 + torch.erf(x / 2 ** 0.5))
    return x @ model.head.weight.T + model.head.bias


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("embedding, head", [(0, -1), (5, 0), (5, 11)])
def test_each_cell_equals_a_hand_written_loop(cell, embedding, head):
    model = make(cell, layers=2, embedding=embedding, head=head).eval()
    assert model.head.in_features == (8 if head == -1 else head or 8)
    ids = torch.randint(0, V, (3, 9))
    logits, state = model(ids)
    assert logits.shape == (3, 9, V)
    assert len(state) == (2 if cell == "lstm" else 1) and state[0].shape == (2, 3, 8)
    torch.testing.assert_close(logits, reference_logits(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
def test_chunked_run_with_carried_state_equals_whole_run(cell):
    model = make(cell, layers=2).eval()
    ids = torch.randint(0, V, (2, 30))
    whole, _ = model(ids)
    state, parts = None, []
    for chunk in ids.split([7, 1, 12, 10], dim=1):
        out, state = model(chunk, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("forget_bias", [1.0, 2.5])
def test_lstm_forget_gate_starts_at_its_bias_and_other_weights_keep_pytorch_init(forget_bias):
    torch.manual_seed(3)
    plain = CharRNN(ModelConfig(num_layers=2, hidden_size=8, vocab_size=V, forget_bias=0.0))
    torch.manual_seed(3)
    model = CharRNN(ModelConfig(num_layers=2, hidden_size=8, vocab_size=V, forget_bias=forget_bias))
    H = 8
    for k in range(2):
        total = getattr(model.rnn, f"bias_ih_l{k}") + getattr(model.rnn, f"bias_hh_l{k}")  # (4H,): i, f, g, o
        torch.testing.assert_close(total[H:2 * H], torch.full((H,), forget_bias))
        for name in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
            a, b = getattr(model.rnn, name), getattr(plain.rnn, name)
            torch.testing.assert_close(torch.cat([a[:H], a[2 * H:]]), torch.cat([b[:H], b[2 * H:]]))
    for name, p in plain.named_parameters():
        if "bias_" not in name:
            torch.testing.assert_close(dict(model.named_parameters())[name], p)
    # with input and state zero, each unit's forget gate opens at sigmoid(forget_bias)
    x = torch.zeros(1, 1, model.rnn.input_size)
    _, (h, c) = model.rnn(x, (torch.zeros(2, 1, H), torch.ones(2, 1, H)))
    gates = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    i, f, g, _ = gates.chunk(4)
    torch.testing.assert_close(c[0, 0], torch.sigmoid(f) * 1.0 + torch.sigmoid(i) * torch.tanh(g))
    assert torch.all(torch.sigmoid(f) > 0.7)


def test_every_cell_type_has_a_reference():
    assert set(REFERENCE) == set(CELLS)


@pytest.mark.parametrize("cell", list(CELLS))
def test_parameter_count_matches_the_closed_form(cell):
    gates = REFERENCE[cell][1]
    L, H, E = 3, 16, 7
    model = make(cell, layers=L, hidden=H, embedding=E)
    rnn = sum(gates * H * ((E if i == 0 else H) + H) + 2 * gates * H for i in range(L))
    assert model.num_parameters() == V * E + rnn + (H * H + H) + H * V + V  # the head's hidden layer, as wide
    assert make(cell, layers=L, hidden=H, embedding=E, head=5).num_parameters() == V * E + rnn + (H * 5 + 5) + 5 * V + V
    assert make(cell, layers=1, hidden=H, head=0).num_parameters() == gates * H * (V + H) + 2 * gates * H + H * V + V


@pytest.mark.parametrize("embedding", [0, 6])
def test_one_hot_and_embedding_inputs_both_train(embedding):
    model = make("gru", layers=1, hidden=24, embedding=embedding)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10] * 4])
    losses = []
    for _ in range(60):
        logits, _ = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_padding_changes_neither_loss_nor_gradients():
    model = make("lstm", layers=2, hidden=8, embedding=4)
    ids = torch.arange(4, 4 + 20) % V
    ids = ids.clamp(min=4).numpy()
    starts, lengths = torch.tensor([0, 5]).numpy(), torch.tensor([4, 9]).numpy()
    tight = pad_records(ids, starts, lengths, 1, 2, 0)  # (2, 11)
    loose = torch.cat([tight, torch.zeros(2, 6, dtype=torch.long)], 1)  # six more columns of <pad>

    def loss_and_grads(seq):
        model.zero_grad()
        logits, _ = model(seq[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten(), ignore_index=0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    l1, g1 = loss_and_grads(tight)
    l2, g2 = loss_and_grads(loose)
    torch.testing.assert_close(l1, l2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_detach_keeps_values_and_cuts_the_graph():
    model = make("lstm")
    _, state = model(torch.randint(0, V, (2, 3)))
    cut = detach(state)
    assert all(not s.requires_grad for s in cut)
    assert all(torch.equal(a, b) for a, b in zip(state, cut))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("embedding, head", [(0, 0), (5, -1), (5, 13)])
def test_flops_per_character_are_twice_the_weights_each_character_meets(cell, embedding, head):
    """Every weight of the recurrent layers and the head (its hidden layer too) is one multiply-add per
    character (a one-hot input counts as the full product the fused module computes); a table read costs the
    first input product."""
    model = make(cell, layers=3, hidden=8, embedding=embedding, head=head)
    weights = {n: p.numel() for n, p in model.named_parameters() if "weight" in n and "embed" not in n}
    in_head = sum(v for n, v in weights.items() if n.startswith(("head.", "readout.")))
    assert forward_flops(model.cfg) == 2 * sum(weights.values())
    assert forward_flops(model.cfg, head=False) == 2 * (sum(weights.values()) - in_head)
    assert forward_flops(model.cfg, lookup=True) == 2 * (sum(weights.values()) - weights["rnn.weight_ih_l0"])


# ---- the attention head ---------------------------------------------------------------------------------
def make_recall(width=4, memory=5, layers=1, hidden=8, seed=0, grams=0, shifted=True):
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(num_layers=layers, hidden_size=hidden, embedding=5, grams=grams, gram_buckets=97,
                                attention=width, memory=memory, shifted_keys=shifted, vocab_size=V))
    nn.init.normal_(model.recall.out.weight, std=0.5)  # it starts at zero: give it something to add
    return model.eval()


def hand_recall(model, out):
    """The attention head as a loop over rows and positions: position t reads the values of positions
    max(0, t - memory + 1) .. t, weighted by the softmax of its query against their keys over sqrt(width); with
    shifted keys, position j's key adds the output of position j - 1 (none before the first) times `before`."""
    r = model.recall
    W, M = r.width, r.memory
    rows = []
    for b in range(out.shape[0]):
        kv = out[b] @ r.keys.weight.T  # (T, 2W)
        if r.before is not None:
            kv = kv.clone()
            for j in range(1, out.shape[1]):
                kv[j, :W] += out[b, j - 1] @ r.before.weight.T
        row = []
        for t in range(out.shape[1]):
            seen = kv[max(0, t - M + 1):t + 1]
            w = torch.softmax((out[b, t] @ r.query.weight.T) @ seen[:, :W].T / W ** 0.5, -1)
            row.append(out[b, t] + (w @ seen[:, W:]) @ r.out.weight.T)
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("memory, shifted", [(1, True), (5, True), (40, True), (5, False)])
def test_the_attention_head_equals_a_hand_written_loop(memory, shifted):
    model = make_recall(memory=memory, shifted=shifted)
    ids = torch.randint(0, V, (2, 23))
    out, state = model.features(ids)
    plain, _ = model.rnn(model.embed(ids))
    torch.testing.assert_close(out, hand_recall(model, plain), atol=1e-5, rtol=1e-5)
    assert model.state_names == ("h", "c", "memory") and state[-1].shape == (memory, 2, 2 * 4 + 1)


@pytest.mark.parametrize("grams, cell", [(0, "lstm"), (3, "lstm"), (0, "gru")])
def test_the_attention_head_read_in_pieces_equals_the_whole_text(grams, cell):
    """Pieces shorter and longer than the memory: the keys and values carried in the state stand in for the text
    read before, and the last layer's h for the output before a piece's first position (a shifted key's)."""
    model = make_recall(memory=6, layers=2, grams=grams)
    if cell != "lstm":
        model = CharRNN(model.cfg.replace(cell=cell)).eval()
        nn.init.normal_(model.recall.out.weight, std=0.5)
    ids = torch.randint(0, V, (3, 40))
    whole, _ = model(ids)
    state, parts = None, []
    for chunk in ids.split([1, 4, 13, 2, 20], dim=1):
        out, state = model(chunk, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)


def test_the_attention_head_starts_as_no_head_and_counts_its_weights():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden_size=8, embedding=5, attention=3, vocab_size=V))
    ids = torch.randint(0, V, (2, 9))
    plain, _ = model.rnn(model.embed(ids))
    torch.testing.assert_close(model.features(ids)[0], plain)  # its output layer starts at zero
    without = CharRNN(ModelConfig(hidden_size=8, embedding=5, attention=0, vocab_size=V)).num_parameters()
    assert model.num_parameters() == without + 8 * 3 + 8 * 6 + 8 * 3 + 3 * 8  # query, key and value, shift, out
    M = model.cfg.memory
    assert forward_flops(model.cfg) == forward_flops(model.cfg.replace(attention=0)) + 2 * (5 * 8 * 3 + 2 * M * 3)
    assert forward_flops(model.cfg) - forward_flops(model.cfg.replace(shifted_keys=False)) == 2 * 8 * 3


@pytest.mark.parametrize("fields, words", [({"attention": -1}, "attention: must be 0"),
                                           ({"memory": 0}, "memory: must be from 1"),
                                           ({"memory": 10**6}, "memory: must be from 1")])
def test_attention_options_are_checked(fields, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig(**fields)


# ---- hashed context inputs ------------------------------------------------------------------------------
def make_grams(grams=4, buckets=97, layers=1, hidden=8, seed=0, embedding=5):
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(num_layers=layers, hidden_size=hidden, embedding=embedding, grams=grams,
                               gram_buckets=buckets, attention=0, vocab_size=V))


def hand_hashed_inputs(model, ids):
    """Each position's input as a loop over positions and context lengths: the embedding, plus for k = 2..K the
    table row of the k ids ending there (ids + 1, 0 before the text), hashed one id at a time from the current
    one back."""
    cfg, out = model.cfg, []
    for b in range(ids.shape[0]):
        row = []
        for t in range(ids.shape[1]):
            x = model.embed.weight[ids[b, t]] if cfg.embedding else nn.functional.one_hot(ids[b, t], V).float()
            h = int(ids[b, t]) + 1
            for back, table in enumerate(model.grams, start=1):
                before = int(ids[b, t - back]) + 1 if t - back >= 0 else 0
                h = (h * 1_000_003 + before) % 2_147_483_647
                x = x + table.weight[h % cfg.gram_buckets]
            row.append(x)
        out.append(torch.stack(row))
    return torch.stack(out)  # (B, T, E)


@pytest.mark.parametrize("embedding", [0, 5])
def test_hashed_context_inputs_equal_a_hand_written_loop(embedding):
    model = make_grams(embedding=embedding)
    ids = torch.randint(0, V, (2, 9))
    rows, _ = context_rows(ids, torch.zeros(2, model.cfg.grams - 1, dtype=torch.long), model.cfg.grams,
                           model.cfg.gram_buckets)
    got = model.inputs(ids) + sum(table(r) for table, r in zip(model.grams, rows))
    torch.testing.assert_close(got, hand_hashed_inputs(model, ids))


@pytest.mark.parametrize("chunk, embedding", [(1, 5), (2, 0), (5, 5)])
def test_hashed_contexts_read_in_pieces_equal_the_whole_text(chunk, embedding):
    model = make_grams(layers=2, embedding=embedding)
    ids = torch.randint(0, V, (3, 17))
    whole, _ = model(ids)
    state, parts = None, []
    for i in range(0, ids.shape[1], chunk):
        logits, state = model(ids[:, i:i + chunk], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole)
    assert [s.shape for s in state] == [(2, 3, 8), (2, 3, 8), (1, 3, 3)]  # h, c, then the last 3 ids + 1
    assert state[-1][0].tolist() == (ids[:, -3:] + 1).float().tolist()


def test_hashed_context_tables_are_left_out_of_the_network_size():
    plain, hashed = make(layers=1, embedding=5), make_grams(grams=3, buckets=50)
    assert hashed.num_parameters(tables=False) == plain.num_parameters()
    assert hashed.num_parameters() == plain.num_parameters() + 2 * 50 * 5


@pytest.mark.parametrize("fields, words", [({"grams": 1}, "grams: must be 0"), ({"grams": 9}, "from 2 to 8"),
                                           ({"gram_buckets": 0}, "gram_buckets: must be from 1")])
def test_hashed_context_options_are_checked(fields, words):
    with pytest.raises(ValueError, match=words):
        ModelConfig(**fields)
