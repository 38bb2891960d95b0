"""from_module: unsupported ops raise an error naming the fx node, or become an explicitly fixed
region; values turned into constants are refused; the module is left as it was."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import symmetries as sy
from architectures import ExtractionError, from_module
from extract_models import build_model, model_inputs, run_model


# -- unsupported ops ---------------------------------------------------------------------------------
class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.cumsum(torch.relu(self.a(x)), dim=-1))))


class Interleave(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        # (N, H, C, W) → (N, H·C·W): each channel's copies are strided by C·W and W: no repeat says that
        return self.fc(torch.relu(self.conv(x)).transpose(1, 2).flatten(1))


class LRNNet(nn.Module):
    """LocalResponseNorm normalises each channel by its neighbours' squares: no built-in rule."""

    def __init__(self):
        super().__init__()
        self.conv, self.lrn, self.conv2 = nn.Conv2d(3, 4, 1), nn.LocalResponseNorm(2), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.lrn(self.conv(x))))


@pytest.mark.parametrize("model,inputs,node", [
    (Cumsum, torch.randn(3, 4), "cumsum"),
    (Interleave, torch.randn(2, 3, 6, 6), "flatten"),
    (LRNNet, torch.randn(2, 3, 5, 5), "lrn"),
])
def test_unsupported_ops_name_the_node(model, inputs, node):
    m = model()
    with pytest.raises(ExtractionError, match=f"fx node '{node}'") as info:
        from_module(m, inputs)
    assert info.value.node == node and isinstance(info.value, sy.errors.SymmetryError)
    assert "unknown='fixed'" in str(info.value)


def test_unknown_fixed_makes_the_region_fixed_and_stays_exact():
    m = Cumsum().double()
    g = from_module(m, torch.randn(3, 4, dtype=torch.float64), unknown="fixed")
    assert [s.name for s in g.spaces()] == ["b"]  # the space entering cumsum is gone, the next one stays
    assert {p.name for p in g.parameters() if p.fixed} == {"a.weight", "a.bias", "c.bias"}
    x = torch.randn(7, 4, dtype=torch.float64)
    T = sy.random_transforms(g, 3)
    y, y2 = run_model(m, m.state_dict(), (x,)), run_model(m, sy.apply(g, m.state_dict(), T), (x,))
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    gn = from_module(LRNNet(), torch.randn(2, 3, 5, 5), unknown="fixed")
    assert gn.spaces() == [] and all(p.fixed for p in gn.parameters())
    with pytest.raises(ValueError, match="unknown must be"):
        from_module(m, torch.randn(3, 4), unknown="ignore")


# -- ops over spatial dimensions given an unbatched input ------------------------------------------------
class Through(nn.Module):
    """``last(op(relu(first(x))))``: ``op`` (a module, or a function of the features) sits between two
    parameterised layers, so the space ``first`` produces flows through it."""

    def __init__(self, first, op, last):
        super().__init__()
        self.first, self.op, self.last = first, op, last

    def forward(self, x):
        return self.last(self.op(torch.relu(self.first(x))))


class Fn(nn.Module):
    def __init__(self, f, weight=None):
        super().__init__()
        self.f = f
        self.weight = None if weight is None else nn.Parameter(weight)

    def forward(self, h):
        return self.f(h) if self.weight is None else self.f(h, self.weight)


def _assert_transforms_keep_the_function(m, g, x):
    y = run_model(m, m.state_dict(), (x,))
    for seed in range(3):
        T = sy.random_transforms(g, seed)
        torch.testing.assert_close(run_model(m, sy.apply(g, m.state_dict(), T), (x,)), y, rtol=1e-10, atol=1e-10)


# torch reads a 2-D input to a 1-d op (a 3-D input to a 2-d op) as one unbatched sample (C, L): the op
# then slides over dimension 1, which holds the features, so no space may cross it.
_UNBATCHED = {
    "AvgPool1d on (N, F)": (lambda: Through(nn.Linear(3, 6), nn.AvgPool1d(3, 1, 1), nn.Linear(6, 2)), (4, 3)),
    "MaxPool1d on (N, F)": (lambda: Through(nn.Linear(3, 6), nn.MaxPool1d(3, 1, 1), nn.Linear(6, 2)), (4, 3)),
    "AdaptiveMaxPool1d on (N, F)": (lambda: Through(nn.Linear(3, 6), nn.AdaptiveMaxPool1d(3), nn.Linear(3, 2)),
                                    (4, 3)),
    "F.avg_pool1d on (N, F)": (lambda: Through(nn.Linear(3, 6), Fn(lambda h: F.avg_pool1d(h, 3, 1, 1)),
                                               nn.Linear(6, 2)), (4, 3)),
    "F.max_pool1d on (N, F)": (lambda: Through(nn.Linear(3, 6), Fn(lambda h: F.max_pool1d(h, 3, 1, 1)),
                                               nn.Linear(6, 2)), (4, 3)),
    "MaxPool2d on (N, C, L)": (lambda: Through(nn.Conv1d(2, 6, 1), nn.MaxPool2d(3, 1, 1), nn.Conv1d(6, 2, 1)),
                               (4, 2, 5)),
    "F.avg_pool2d on (N, C, L)": (lambda: Through(nn.Conv1d(2, 6, 1), Fn(lambda h: F.avg_pool2d(h, 3, 1, 1)),
                                                  nn.Conv1d(6, 2, 1)), (4, 2, 5)),
    "Conv1d on (N, F)": (lambda: Through(nn.Linear(3, 6), nn.Conv1d(4, 4, 3, padding=1), nn.Linear(6, 2)), (4, 3)),
    "ConvTranspose1d on (N, F)": (lambda: Through(nn.Linear(3, 6), nn.ConvTranspose1d(4, 4, 3, padding=1),
                                                  nn.Linear(6, 2)), (4, 3)),
    "F.conv1d on (N, F)": (lambda: Through(nn.Linear(3, 6), Fn(lambda h, w: F.conv1d(h, w, padding=1),
                                                               torch.randn(4, 4, 3)), nn.Linear(6, 2)), (4, 3)),
    "InstanceNorm1d on (N, F)": (lambda: Through(nn.Linear(3, 4), nn.InstanceNorm1d(4, affine=True),
                                                 nn.Linear(4, 2)), (4, 3)),
}


@pytest.mark.parametrize("case", sorted(_UNBATCHED))
def test_an_unbatched_input_to_a_spatial_op_is_refused(case):
    make, shape = _UNBATCHED[case]
    node = case.split()[0][2:] if case.startswith("F.") else "op"  # fx names a function's node after it
    torch.manual_seed(0)
    m = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    with pytest.raises(ExtractionError, match="unbatched sample") as info:
        from_module(m, x)
    assert info.value.node == node and f"fx node '{node}'" in str(info.value) and "'first'" in str(info.value)
    g = from_module(m, x, unknown="fixed")  # the region around the op is fixed, and stays exact
    assert "first" not in [s.name for s in g.spaces()]
    _assert_transforms_keep_the_function(m, g, x)


@pytest.mark.parametrize("op,classes", [
    (nn.AvgPool1d(3, 1, 1), (sy.PermutationScaling(), sy.SemiPermutation())),
    (nn.MaxPool1d(3, 1, 1), (sy.PermutationScaling(), sy.SemiPermutation())),
    (nn.Conv1d(6, 6, 3, padding=1), None),
    (nn.InstanceNorm1d(6, affine=True), (sy.Permutation(),)),
])
def test_the_same_ops_on_a_batched_input_keep_the_space(op, classes):
    torch.manual_seed(0)
    m = Through(nn.Conv1d(3, 6, 1), op, nn.Conv1d(6, 2, 1)).double().eval()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    g = from_module(m, x)
    assert "first" in [s.name for s in g.spaces()]
    if classes is not None:
        assert g.space("first").classes == classes
    _assert_transforms_keep_the_function(m, g, x)


def _passes_through(f):
    @functools.wraps(f)
    def wrapper(self, *args, **kwargs):
        return f(self, *args, **kwargs)
    return wrapper


class DecoratedForward(nn.Module):
    """A decorator hides ``forward``'s signature behind ``(*args, **kwargs)`` (as transformers' models
    do): torch.fx fails with a raw ValueError while patching it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    @_passes_through
    def forward(self, x, mask=None, **kwargs):
        return self.b(torch.relu(self.a(x)))


def test_a_module_torch_fx_cannot_trace_is_a_typed_error():
    for unknown in ("error", "fixed"):
        with pytest.raises(ExtractionError, match="torch.fx could not trace DecoratedForward") as info:
            from_module(DecoratedForward(), torch.randn(2, 3), unknown=unknown)
        assert isinstance(info.value.__cause__, ValueError)  # fx's own error, chained
        assert "wrapper nn.Module" in str(info.value) and "builder" in str(info.value)


def test_values_turned_into_constants_are_refused():
    class Leak(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h + torch.from_numpy(np.asarray(h)).sum())  # numpy leaves the traced graph

    with pytest.raises(ExtractionError, match="converted to a constant") as info:
        from_module(Leak(), torch.randn(2, 3))
    assert info.value.node == "relu"
    g = from_module(Leak(), torch.randn(2, 3), unknown="fixed")
    assert g.spaces() == []


def test_the_module_is_left_as_it_was():
    m = build_model("conv_bn").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attrs = set(vars(m))
    x = model_inputs("conv_bn")[0].clone()
    from_module(m, x)
    assert m.training and all(mod.training for mod in m.modules())
    assert set(vars(m)) == attrs
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(x, model_inputs("conv_bn")[0])


def test_declaring_page_examples_run():
    import contextlib
    import io
    import re
    from pathlib import Path
    page = Path(__file__).resolve().parents[1] / "docs" / "declaring.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    blocks = [b for b in blocks if "repeat=(" not in b]     # the repeated-edge example: tests/test_repeat_edge.py
    assert len(blocks) == 7
    outs = []
    for i, block in enumerate(blocks):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(block, f"declaring.md block {i}", "exec"), {"__name__": f"declaring_{i}"})
        outs.append(buf.getvalue().split())
    assert float(outs[0][-1]) < 1e-12
    assert outs[2] == ["wte.weight", "1", "stream"]
    assert outs[3] == ["cumsum", "['b']"]
    assert " ".join(outs[4]) == ("expand (HeadStructured(4, Trivial()),) grouped.groups grouped (HeadStructured(4, "
                                 "Permutation()),) grouped.groups lstm.l0 (Permutation(),) None lstm.l1 "
                                 "(Permutation(),) None")  # channel groups and an LSTM
    assert outs[5][-4:] == ["('out.weight_mask',", "None),", "('out.weight_orig',", "None)]"]  # no tensor skipped
    assert outs[6] == ["norm", "(SignFlip(),)"]  # the LocalResponseNorm rule of the page
