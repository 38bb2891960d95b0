"""nn.LSTM, nn.GRU and nn.RNN through from_module (issue #13 §2): each layer's (and direction's)
hidden space indexes the row slices of every gate of weight_ih/weight_hh/biases (out) and the
columns of weight_hh (in); LSTM/GRU hidden spaces admit permutations (sigmoid gates), an RNN's
signed permutations (tanh) or positive scalings (ReLU); proj_size adds a linear state space.
batch_first both ways, stacked and bidirectional layers, ``out`` and ``h_n[-1]`` used downstream.
Random transforms of every admitted class keep the output to float64 round-off; a sign flip of an
LSTM unit and a permutation of one gate alone change it; an initial state passed in and other uses
of h_n are refused; weight matching undoes a planted permutation."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import output_change, planted_alignment
from symmetries.testing import check_invariance

KINDS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
HIDDEN = {"lstm": sy.Permutation(), "gru": sy.Permutation(), "rnn_tanh": sy.SignedPermutation(),
          "rnn_relu": sy.PermutationScaling()}


class Seq(nn.Module):
    """Linear → ReLU → recurrent layer → ``fc(out at the last step) + fc_h(h_n[-1])`` (``cat``:
    both directions' final states of the last layer concatenated)."""

    def __init__(self, kind: str, layers=1, bidirectional=False, batch_first=False, proj=0, cat=False):
        super().__init__()
        kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        if kind.startswith("rnn"):
            kw["nonlinearity"] = kind[4:]
        if proj:
            kw["proj_size"] = proj
        self.inp, self.rnn = nn.Linear(3, 5), KINDS[kind](5, 6, **kw)
        out = proj or 6
        d = 2 if bidirectional else 1
        self.fc, self.fc_h = nn.Linear(d * out, 2), nn.Linear(d * out if cat else out, 2)
        self.lstm, self.batch_first, self.cat = kind == "lstm", batch_first, cat and bidirectional

    def forward(self, x):
        out, h = self.rnn(torch.relu(self.inp(x)))
        if self.lstm:
            h, _ = h
        last = out[:, -1] if self.batch_first else out[-1]
        final = torch.cat([h[-2], h[-1]], dim=-1) if self.cat else h[-1]
        return self.fc(last) + self.fc_h(final)


def _inputs(batch_first: bool, seed: int = 0) -> torch.Tensor:
    shape = (3, 4, 3) if batch_first else (4, 3, 3)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(seed, *args, **kwargs) -> Seq:
    torch.manual_seed(seed)
    return Seq(*args, **kwargs).double().eval()


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), layers=st.integers(1, 2), bidirectional=st.booleans(),
       batch_first=st.booleans(), cat=st.booleans(), seed=st.integers(0, 2**16))
def test_recurrent_layers_extract_exact_hidden_symmetries(kind, layers, bidirectional, batch_first, cat, seed):
    model = _model(seed, kind, layers, bidirectional, batch_first, cat=cat)
    g = architectures.from_module(model, _inputs(batch_first))
    hidden = [f"rnn.l{k}{sfx}" for k in range(layers) for sfx in ("", "_reverse")[:1 + bidirectional]]
    assert [s.name for s in g.spaces()] == ["inp", *hidden]
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    for name in hidden:
        assert g.space(name).classes == (HIDDEN[kind],)
        sfx = name.split(".")[1][1:]  # "0" or "0_reverse"
        edges = {(e.parameter, e.axis, e.role.value, e.slice) for e in g.edges_at(name)}
        rows = {(f"rnn.{w}_l{sfx}", 0, "out", (j * 6, (j + 1) * 6))
                for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for j in range(gates)}
        assert rows | {(f"rnn.weight_hh_l{sfx}", 1, "in", None)} <= edges
    report = check_invariance(model, g, _inputs(batch_first, seed + 1), examples=3, seed=seed)
    assert report.passed, report


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_projection_gives_a_linear_state_space(bidirectional):
    model = _model(1, "lstm", 2, bidirectional, True, proj=4)
    g = architectures.from_module(model, _inputs(True))
    assert g.space("rnn.l0").classes == (sy.Permutation(),)
    assert g.space("rnn.l0.proj").classes == (sy.Invertible(),)  # read linearly: weight_hh, the next layer
    assert g.space("rnn.l1.proj").classes == (sy.Invertible(),)  # and fc, fc_h
    assert {(e.parameter, e.axis, e.role.value) for e in g.edges_at("rnn.l0.proj")} >= {
        ("rnn.weight_hr_l0", 0, "out"), ("rnn.weight_hh_l0", 1, "in"), ("rnn.weight_ih_l1", 1, "in")}
    assert check_invariance(model, g, _inputs(True, 2), examples=3).passed


def test_lstm_sign_flips_and_single_gate_permutations_change_the_output():
    """The hidden space is Permutation only: a sign flip breaks the sigmoid gates, and the four gate
    slices must move together."""
    model, x = _model(0, "lstm", 1), _inputs(False, 3)
    g = architectures.from_module(model, _inputs(False))
    perm = sy.Permutation().random(6, seed=1)
    assert output_change(model, g, x, {"rnn.l0": perm}) < 1e-12
    assert output_change(model, g, x, {"rnn.l0": sy.SignFlip().random(6, seed=2)}) > 1e-6
    one_gate = g.copy()
    for e in list(one_gate.edges_at("rnn.l0")):  # the forget gate's slices in a space of their own
        if e.slice == (6, 12):
            one_gate.nx.remove_edge(e.parameter, "rnn.l0")
    one_gate.add_space("forget", 6, (sy.Permutation(),))
    for p in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        one_gate.connect(f"rnn.{p}", "forget", axis=0, role="out", slice=(6, 12))
    assert output_change(model, one_gate, x, {"rnn.l0": perm}) > 1e-6


class InitialState(nn.Module):
    def __init__(self, zeros: bool):
        super().__init__()
        self.inp, self.rnn, self.fc = nn.Linear(3, 5), nn.GRU(5, 6), nn.Linear(6, 2)
        self.zeros = zeros

    def forward(self, x, h0):
        if self.zeros:
            h0 = torch.zeros(1, x.shape[1], 6, dtype=x.dtype)
        out, _ = self.rnn(torch.relu(self.inp(x)), h0)
        return self.fc(out[-1])


class StateUsedWhole(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(3, 6, num_layers=2), nn.Linear(6, 2)

    def forward(self, x):
        _, (h, _) = self.rnn(x)
        return self.fc(h.mean(0))  # mixes the layers' states: their spaces differ


def test_initial_states_and_whole_final_states_are_refused_or_handled():
    x, h0 = _inputs(False), torch.randn(1, 3, 6, dtype=torch.float64)
    with pytest.raises(architectures.ExtractionError, match="initial state") as err:
        architectures.from_module(InitialState(False).double(), (x, h0))
    assert err.value.node == "rnn"
    zeros = InitialState(True).double().eval()
    g = architectures.from_module(zeros, (x, h0))
    assert g.space("rnn.l0").classes == (sy.Permutation(),)
    assert check_invariance(zeros, g, (x, h0), examples=2).passed
    with pytest.raises(architectures.ExtractionError, match="stack") as err:
        architectures.from_module(StateUsedWhole().double(), x)
    fixed = architectures.from_module(StateUsedWhole().double(), x, unknown="fixed")
    assert [s.name for s in fixed.spaces()] == []


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_weight_matching_undoes_a_planted_permutation(kind):
    model, x = _model(2, kind, 2, True, True, cat=True), _inputs(True, 4)
    g = architectures.from_module(model, _inputs(True))
    ratio, change = planted_alignment(model, g, x, seed=3)
    assert ratio < 1e-20 and change < 1e-10
