"""from_module: unsupported ops raise an error naming the fx node, or become an explicitly fixed
region; values turned into constants are refused; the module is left as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
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
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.conv2 = nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.gn(self.conv(x))))


@pytest.mark.parametrize("model,inputs,node", [
    (Cumsum, torch.randn(3, 4), "cumsum"),
    (Interleave, torch.randn(2, 3, 6, 6), "flatten"),
    (GroupNormNet, torch.randn(2, 3, 5, 5), "gn"),
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
    gn = from_module(GroupNormNet(), torch.randn(2, 3, 5, 5), unknown="fixed")
    assert gn.spaces() == [] and all(p.fixed for p in gn.parameters())
    with pytest.raises(ValueError, match="unknown must be"):
        from_module(m, torch.randn(3, 4), unknown="ignore")


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
    assert len(blocks) == 4
    outs = []
    for i, block in enumerate(blocks):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(block, f"declaring.md block {i}", "exec"), {"__name__": f"declaring_{i}"})
        outs.append(buf.getvalue().split())
    assert float(outs[0][-1]) < 1e-12
    assert outs[2] == ["wte.weight", "1", "stream"]
    assert outs[3] == ["cumsum", "['b']"]
