"""from_module on small models drawn from a grammar of layers (issue #13): Linear or Conv1d layers,
plain or weight-normed, spectral-normed or pruned; activations; BatchNorm and LayerNorm; residual
blocks; one parameter sliced into several biases and gains (disjoint or overlapping); BatchNorm with
a pruned gain; a layer applied twice (tied parameters). Extraction either raises an ExtractionError or yields a graph whose every
admitted class, drawn at random, keeps the output to float64 round-off."""
from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations, prune

import architectures
from symmetries.testing import check_invariance

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "leaky": nn.LeakyReLU,
        "none": nn.Identity}
WRAPS = ("plain", "plain", "weight_norm", "spectral_norm", "prune", "legacy_weight_norm", "weight_norm_whole")
POOL = 24  # length of the parameter sliced into biases


def _wrap(m: nn.Module, how: str) -> nn.Module:
    if how == "weight_norm":
        return parametrizations.weight_norm(m)
    if how == "weight_norm_whole":
        return parametrizations.weight_norm(m, dim=None)
    if how == "spectral_norm":
        return parametrizations.spectral_norm(m)
    if how == "prune":
        return prune.l1_unstructured(m, "weight", amount=0.3)
    if how == "legacy_weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return nn.utils.weight_norm(m)
    return m


class GrammarNet(nn.Module):
    """The layers of ``steps`` in order, on features of the last dimension (``conv=False``) or on
    channels of dimension 1 (``conv=True``, then averaged over positions), then a linear head."""

    def __init__(self, steps, conv: bool, d_in: int):
        super().__init__()
        self.conv, self.ops, self.layers = conv, [], nn.ModuleList()
        self.pool = nn.Parameter(torch.randn(POOL))
        squares: dict[int, int] = {}
        d = d_in

        def layer(i, o, wrap="plain", bias=True):
            m = nn.Conv1d(i, o, 3, padding=1, bias=bias) if conv else nn.Linear(i, o, bias=bias)
            self.layers.append(_wrap(m.double(), wrap))
            return len(self.layers) - 1

        for step in steps:
            kind = step[0]
            if kind == "layer":
                _, width, wrap = step
                self.ops.append(("layer", layer(d, width, wrap)))
                d = width
            elif kind == "act":
                self.layers.append(ACTS[step[1]]())
                self.ops.append(("layer", len(self.layers) - 1))
            elif kind == "norm":
                norm = nn.BatchNorm1d(d) if conv or step[1] == "batch" else nn.LayerNorm(d)
                with torch.no_grad():
                    for t in norm.state_dict(keep_vars=True).values():
                        if t.is_floating_point():
                            t.copy_(torch.rand_like(t) + 0.5 if t is getattr(norm, "running_var", None)
                                    else torch.randn_like(t))
                self.layers.append(norm.double())
                self.ops.append(("layer", len(self.layers) - 1))
            elif kind == "res":
                _, hidden, act, wrap = step
                a, b = layer(d, hidden, wrap), layer(hidden, d)
                self.layers.append(ACTS[act]())
                self.ops.append(("res", (a, len(self.layers) - 1, b)))
            elif kind == "slice":
                _, width, start = step
                start = min(start, POOL - width)
                self.ops.append(("slice", (layer(d, width, bias=False), start, start + width)))
                d = width
            elif kind == "gain":  # a per-feature gain sliced from the same parameter as the biases
                start = min(step[1], POOL - d)
                self.ops.append(("gain", (start, start + d)))
            elif kind == "prune_norm":  # BatchNorm with a pruned gain
                norm = prune.random_unstructured(nn.BatchNorm1d(d), "weight", amount=0.5)
                with torch.no_grad():
                    norm.running_var.uniform_(0.5, 2.0)
                    norm.running_mean.normal_()
                self.layers.append(norm.double())
                self.ops.append(("layer", len(self.layers) - 1))
            elif kind == "tied":  # one square layer, applied here and wherever else this width is tied
                if d not in squares:
                    squares[d] = layer(d, d, step[1])
                self.ops.append(("layer", squares[d]))
        self.head = nn.Linear(d, 3).double()

    def forward(self, x):
        for kind, arg in self.ops:
            if kind == "layer":
                x = self.layers[arg](x)
            elif kind == "res":
                a, act, b = arg
                x = x + self.layers[b](self.layers[act](self.layers[a](x)))
            elif kind == "gain":
                gain = self.pool[arg[0]:arg[1]]
                x = x * (gain[:, None] if self.conv else gain)
            else:
                i, start, stop = arg
                bias = self.pool[start:stop]
                x = self.layers[i](x) + (bias[:, None] if self.conv else bias)
        if self.conv:
            x = x.mean(-1)
        return self.head(x)


widths = st.integers(2, 6)
steps = st.lists(st.one_of(
    st.tuples(st.just("layer"), widths, st.sampled_from(WRAPS)),
    st.tuples(st.just("act"), st.sampled_from(sorted(ACTS))),
    st.tuples(st.just("norm"), st.sampled_from(["batch", "layer"])),
    st.tuples(st.just("res"), widths, st.sampled_from(sorted(ACTS)), st.sampled_from(WRAPS)),
    st.tuples(st.just("slice"), widths, st.integers(0, POOL - 2)),
    st.tuples(st.just("tied"), st.sampled_from(WRAPS)),
    st.tuples(st.just("gain"), st.integers(0, POOL - 2)),
    st.tuples(st.just("prune_norm")),
), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.booleans(), st.integers(0, 2**16))
def test_extraction_refuses_or_is_exact(program, conv, seed):
    torch.manual_seed(seed)
    d_in = 3
    model = GrammarNet(program, conv, d_in).double().eval()
    x = torch.randn(5, d_in, 7, dtype=torch.float64) if conv else torch.randn(5, d_in, dtype=torch.float64)
    try:
        g = architectures.from_module(model, x)
    except architectures.ExtractionError as err:
        assert err.node is not None
        return
    report = check_invariance(model, g, x, examples=2, seed=seed)
    assert report.passed, (program, conv, report)
