"""Ops that are the identity in eval mode (issue #13 §2): torchvision's stochastic_depth /
StochasticDepth and timm's drop_path / DropPath (rules registered by qualified name, so neither
package is imported by the library: they take effect once the model's own code imported it), and
nn.Identity. Neither package is installed here: local copies of their code, with the same
semantics (``training=False`` or ``p = 0`` → identity; ``mode="row"`` drops whole samples), are
installed under their real module names for the tests. Random transforms of every admitted class
keep the output to float64 round-off; an active stochastic depth is refused; without the rules
(the same code under another package name) extraction refuses the op."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import architectures
import symmetries as sy
from architectures.extract import rules
from architectures.extract.trace import trace
from arch_checks import perturb_norms, planted_alignment
from symmetries.testing import check_invariance

TORCHVISION = '''
import torch
import torch.fx
from torch import nn, Tensor


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision.ops.stochastic_depth (torchvision 0.19)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)


def always(x):
    """(for the tests) a stochastic depth that is active whatever the mode."""
    return stochastic_depth(x, 0.5, "row", True)
'''

TIMM = '''
from torch import nn


def drop_path(x, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True):
    """timm.layers.drop.drop_path (timm 1.0)."""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
'''


def _package(root: str, code: str, leaf: str, parent: str):
    """Modules ``root``, ``root.parent``, ``root.parent.leaf`` (the code), as the real packages lay them
    out (``parent`` re-exports the leaf's public names)."""
    mods = {root: types.ModuleType(root), f"{root}.{parent}": types.ModuleType(f"{root}.{parent}"),
            f"{root}.{parent}.{leaf}": types.ModuleType(f"{root}.{parent}.{leaf}")}
    inner = mods[f"{root}.{parent}.{leaf}"]
    exec(compile(code, f"<{inner.__name__}>", "exec"), inner.__dict__)
    for name, obj in vars(inner).items():
        if not name.startswith("_"):
            setattr(mods[f"{root}.{parent}"], name, obj)
    setattr(mods[root], parent, mods[f"{root}.{parent}"])
    return mods


@pytest.fixture
def packages(monkeypatch):
    """The copies installed as torchvision and timm; the registry is restored afterwards."""
    saved = [dict(t) for t in (rules._PENDING, rules._MODULE_RULES, rules._FUNCTION_RULES)]
    mods = {**_package("torchvision", TORCHVISION, "stochastic_depth", "ops"),
            **_package("timm", TIMM, "drop", "layers")}
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    yield types.SimpleNamespace(tv=mods["torchvision.ops"], timm=mods["timm.layers"])
    for table, before in zip((rules._PENDING, rules._MODULE_RULES, rules._FUNCTION_RULES), saved):
        table.clear()
        table.update(before)


class MBConv(nn.Module):
    """EfficientNet's MBConv (expand, depthwise, project, BatchNorm each) with a residual through
    StochasticDepth, then a ViT-like MLP block with DropPath, nn.Identity in between."""

    def __init__(self, tv, timm, channels: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(channels, 8, 1), nn.BatchNorm2d(8), nn.SiLU(),
                                   nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU(),
                                   nn.Conv2d(8, channels, 1), nn.BatchNorm2d(channels))
        self.stochastic_depth = tv.StochasticDepth(0.2, "row")
        self.identity = nn.Identity()
        self.fc1, self.fc2, self.drop_path = nn.Linear(channels, 6), nn.Linear(6, channels), timm.DropPath(0.1)
        self.head = nn.Linear(channels, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.stochastic_depth(self.block(x))
        x = self.identity(x.mean((2, 3)))
        x = x + self.drop_path(self.fc2(F.gelu(self.fc1(x))))
        return self.head(x)


def _model(packages, seed: int = 0) -> MBConv:
    torch.manual_seed(seed)
    return perturb_norms(MBConv(packages.tv, packages.timm).double().eval())


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_rules_wait_for_their_packages():
    """Registered by name: nothing is imported, the names stay pending while the packages are absent."""
    if "torchvision" in sys.modules or "timm" in sys.modules:
        pytest.skip("torchvision or timm is imported in this process")
    assert {"torchvision.ops.stochastic_depth", "torchvision.ops.StochasticDepth", "timm.layers.drop_path",
            "timm.layers.DropPath", "timm.models.layers.DropPath"} <= set(rules._PENDING)


def test_stochastic_depth_and_drop_path_are_the_identity_in_eval(packages):
    model = _model(packages)
    g = architectures.from_module(model, _inputs())
    assert {s.name for s in g.spaces()} == {"stem", "block.0", "fc1"}  # the stream, the expansion, the MLP
    assert type(model.stochastic_depth) in rules._MODULE_RULES and packages.tv.stochastic_depth in rules._FUNCTION_RULES
    report = check_invariance(model, g, _inputs(1), examples=3)
    assert report.passed, report
    ratio, change = planted_alignment(model, g, _inputs(2), seed=1)
    assert ratio < 1e-20 and change < 1e-10


def test_the_function_rules_serve_when_the_modules_are_traced_into(packages):
    model = _model(packages, 1)
    before = architectures.from_module(model, _inputs())  # resolves the pending names
    architectures.unregister_rule(packages.tv.StochasticDepth)
    architectures.unregister_rule(packages.timm.DropPath)
    g = architectures.from_module(model, _inputs())  # forward traced: the wrapped functions are fx nodes
    graph, _, _ = trace(model, _inputs())
    assert {n.target for n in graph.nodes if n.op == "call_function"} >= {packages.tv.stochastic_depth,
                                                                          packages.timm.drop_path}
    assert architectures.graphs_equivalent(before, g)
    assert check_invariance(model, g, _inputs(1), examples=2).passed


def test_an_active_stochastic_depth_is_refused(packages):
    class Active(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(packages.tv.always(torch.relu(self.a(x))))

    with pytest.raises(architectures.ExtractionError, match="active") as err:
        architectures.from_module(Active(), torch.randn(2, 3))
    assert err.value.node == "stochastic_depth"


def test_without_the_rules_the_op_is_refused(monkeypatch):
    """The same code under a package name no rule waits for: its wrapped function has no rule."""
    mods = _package("othervision", TORCHVISION, "stochastic_depth", "ops")
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    model = nn.Sequential(nn.Linear(3, 4), mods["othervision.ops"].StochasticDepth(0.2, "row"), nn.ReLU(),
                          nn.Linear(4, 2))
    with pytest.raises(architectures.ExtractionError, match="no rule") as err:
        architectures.from_module(model, torch.randn(2, 3))
    assert err.value.node == "stochastic_depth"


def test_identity_modules_keep_every_class():
    model = nn.Sequential(nn.Linear(3, 5), nn.Identity(), nn.Tanh(), nn.Identity(), nn.Linear(5, 2)).double()
    g = architectures.from_module(model, torch.randn(2, 3, dtype=torch.float64))
    assert g.space("0").classes == (sy.SignedPermutation(),)
    assert check_invariance(model, g, torch.randn(4, 3, dtype=torch.float64), examples=3).passed
