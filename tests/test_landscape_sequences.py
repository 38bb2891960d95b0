"""Sequence models in the landscape and in learned matching: per-token loss and accuracy.

Every value is checked against a hand computation: interpolate the state dicts by hand, run the
module, ``F.cross_entropy`` over the flattened tokens.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import architectures
import solvers
import symmetries.landscape as L
from solvers.losses import TargetShapeError, class_logits, mean_loss, summed_loss, token_accuracy
from symmetries.action import apply
from symmetries.classes import HeadStructured, Permutation
from symmetries.errors import SymmetryError


def _tokens(vocab: int, context: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences counting up mod ``vocab`` from random starts; the target is the next token."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    seq = (start + torch.arange(context + 1)) % vocab
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def _gpt(vocab: int, context: int):
    return architectures.gpt2(vocab_size=vocab, n_positions=context, d_model=16, n_heads=2, n_layers=1, d_mlp=32)


def _trained(arch, data, seed: int, steps: int = 40) -> dict:
    torch.manual_seed(seed)
    m = arch.module(seed=seed, dtype=torch.float64)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x).reshape(-1, m(x).shape[-1]), y.reshape(-1)).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module", params=[(11, 8), (8, 8)], ids=["context<vocab", "context==vocab"])
def pair(request):
    vocab, context = request.param
    arch = _gpt(vocab, context)
    data = _tokens(vocab, context, 10, seed=0)
    return arch, _trained(arch, data, 0), _trained(arch, data, 1), data


def _hand(arch, params: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Per-token cross-entropy and token accuracy of ``params``, written out."""
    m = arch.module(dtype=torch.float64)
    m.load_state_dict(params)
    with torch.no_grad():
        out = m(x)
    flat, t = out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return float(F.cross_entropy(flat, t)), float((flat.argmax(1) == t).double().mean())


def test_gpt_curve_and_barriers_equal_a_hand_computation_per_token(pair):
    arch, pa, pb, (x, y) = pair
    keep_a = {k: v.clone() for k, v in pa.items()}
    alphas = np.linspace(0, 1, 7)
    curve = L.interpolation_curve(arch.module(dtype=torch.float64), pa, pb, (x, y), alphas=alphas, batch_size=4)
    hand = [_hand(arch, {k: (1 - a) * pa[k] + a * pb[k] for k in pa}, x, y) for a in alphas]
    loss, acc = np.array([h[0] for h in hand]), np.array([h[1] for h in hand])
    np.testing.assert_allclose(curve.loss, loss, rtol=1e-10)
    np.testing.assert_allclose(curve.accuracy, acc, rtol=0, atol=1e-12)
    assert curve.loss_barrier == pytest.approx(loss.max() - (loss[0] + loss[-1]) / 2, rel=1e-9)
    assert curve.loss_barrier_linear == pytest.approx(np.max(loss - ((1 - alphas) * loss[0] + alphas * loss[-1])),
                                                      rel=1e-9)
    assert curve.accuracy_barrier == pytest.approx((acc[0] + acc[-1]) / 2 - acc.min(), abs=1e-12)
    assert curve.loss_barrier > 0.05                        # the trained pair has a barrier to measure
    assert all(torch.equal(pa[k], keep_a[k]) for k in pa)   # inputs untouched
    ev = L.evaluate(arch.module(dtype=torch.float64), (x, y), pa)
    assert (ev.n, ev.count) == (x.shape[0], x.numel())


def test_context_equal_to_vocabulary_takes_the_class_axis_last():
    arch = _gpt(8, 8)
    x, y = _tokens(8, 8, 6, seed=2)
    p = arch.module(seed=3, dtype=torch.float64).state_dict()
    m = arch.module(dtype=torch.float64)
    m.load_state_dict(p)
    with torch.no_grad():
        out = m(x)
    right = float(F.cross_entropy(out.reshape(-1, 8), y.reshape(-1)))
    along_positions = float(F.cross_entropy(out, y))        # what (batch, C, d) reading would give
    assert abs(right - along_positions) > 1e-3
    ev = L.evaluate(m, (x, y), p)
    assert ev.loss == pytest.approx(right, rel=1e-12)
    assert ev.accuracy == pytest.approx(float((out.argmax(-1) == y).double().mean()), abs=1e-12)


def test_loss_is_counted_per_token_across_batches_of_different_lengths():
    arch = _gpt(11, 8)
    m = arch.module(seed=0, dtype=torch.float64)
    long, short = _tokens(11, 8, 3, seed=4), _tokens(11, 4, 5, seed=5)
    ev = L.evaluate(m, [long, short])
    with torch.no_grad():
        logits = torch.cat([m(long[0]).reshape(-1, 11), m(short[0]).reshape(-1, 11)])
    targets = torch.cat([long[1].reshape(-1), short[1].reshape(-1)])
    assert ev.loss == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-12)
    assert (ev.n, ev.count) == (8, 3 * 8 + 5 * 4)
    per_sequence = (float(F.cross_entropy(logits[:24], targets[:24])) * 3
                    + float(F.cross_entropy(logits[24:], targets[24:])) * 5) / 8
    assert ev.loss != pytest.approx(per_sequence, rel=1e-6)


def test_padding_targets_are_neither_summed_nor_counted():
    arch = _gpt(11, 8)
    m = arch.module(seed=0, dtype=torch.float64)
    x, y = _tokens(11, 8, 4, seed=6)
    y = y.clone()
    y[:, 5:] = -100
    ev = L.evaluate(m, (x, y))
    with torch.no_grad():
        out = m(x)
    keep = y != -100
    assert ev.count == int(keep.sum()) == 20
    assert ev.loss == pytest.approx(float(F.cross_entropy(out.reshape(-1, 11), y.reshape(-1))), rel=1e-12)
    assert ev.accuracy == pytest.approx(float((out.argmax(-1)[keep] == y[keep]).double().mean()), abs=1e-12)
    with pytest.raises(ValueError, match="counted no units"):
        L.evaluate(m, (x, torch.full_like(y, -100)))


@pytest.mark.parametrize("bad", ["short", "per_sequence", "extra_axis", "float"])
def test_targets_that_do_not_match_the_outputs_are_a_typed_error_naming_both_shapes(bad):
    arch = _gpt(11, 8)
    m = arch.module(seed=0)
    x, y = _tokens(11, 8, 4, seed=7)
    y = {"short": y[:, :5], "per_sequence": y[:, 0], "extra_axis": y[..., None], "float": y.float()}[bad]
    with pytest.raises(TargetShapeError, match=r"\(4, 8, 11\).*" + repr(tuple(y.shape)).replace("(", r"\(")
                       .replace(")", r"\)")) as err:
        L.evaluate(m, (x, y))
    assert isinstance(err.value, SymmetryError) and isinstance(err.value, ValueError)
    assert err.value.output_shape == (4, 8, 11) and err.value.target_shape == tuple(y.shape)
    p = m.state_dict()
    with pytest.raises(TargetShapeError):
        L.interpolation_curve(m, p, p, (x, y), alphas=2)


def test_class_outputs_and_regression_are_unchanged():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (9,), generator=g)
    with torch.no_grad():
        out = net(x)
    ev = L.evaluate(net, (x, labels), batch_size=4)
    assert ev.loss == pytest.approx(float(F.cross_entropy(out, labels)), rel=1e-12)
    assert ev.accuracy == pytest.approx(float((out.argmax(1) == labels).double().mean()), abs=1e-12)
    assert ev.count == 9
    target = torch.randn(9, 3, generator=g, dtype=torch.float64)
    ev = L.evaluate(net, (x, target), batch_size=4)
    assert ev.loss == pytest.approx(float(((out - target) ** 2).sum() / 9), rel=1e-12)
    assert np.isnan(ev.accuracy) and ev.count == 9
    with pytest.raises(TargetShapeError, match=r"\(9, 3\).*\(9, 2\)"):
        L.evaluate(net, (x, target[:, :2]))
    with pytest.raises(TargetShapeError, match="integers"):
        class_logits(out, target)


def test_a_user_loss_returns_a_sum_or_a_sum_and_a_count():
    arch = _gpt(11, 8)
    m = arch.module(seed=0, dtype=torch.float64)
    x, y = _tokens(11, 8, 5, seed=8)
    with torch.no_grad():
        out = m(x)
    per_token = float(F.cross_entropy(out.reshape(-1, 11), y.reshape(-1)))
    # a scalar is a sum counted per example (here: the summed token loss → the per-sequence loss)
    ce_sum = lambda o, t: F.cross_entropy(o.reshape(-1, o.shape[-1]), t.reshape(-1), reduction="sum")  # noqa: E731
    ev = L.evaluate(m, (x, y), loss_fn=ce_sum, batch_size=2)
    assert ev.loss == pytest.approx(per_token * 8, rel=1e-12) and ev.count == 5
    # (sum, count) pairs, and a mean with its weight, give the per-token mean over batches of any size
    pair = lambda o, t: (ce_sum(o, t), t.numel())  # noqa: E731
    weighted = lambda o, t: (F.cross_entropy(o.reshape(-1, 11), t.reshape(-1)) * t.numel(), t.numel())  # noqa: E731
    for fn in (pair, weighted, summed_loss):
        ev = L.evaluate(m, (x, y), loss_fn=fn, batch_size=2)
        assert ev.loss == pytest.approx(per_token, rel=1e-12) and ev.count == 40
        assert ev.accuracy == pytest.approx(float((out.argmax(-1) == y).double().mean()), abs=1e-12)
    # a user loss reading another layout: its loss, no accuracy
    def channels_first(o, t):
        return F.cross_entropy(o.transpose(1, 2), t[:, :, 0], reduction="sum"), t[:, :, 0].numel()

    ev = L.evaluate(m, (x, y[..., None]), loss_fn=channels_first)
    assert ev.loss == pytest.approx(per_token, rel=1e-12) and np.isnan(ev.accuracy)
    with pytest.raises(TypeError, match="pair"):
        L.evaluate(m, (x, y), loss_fn=lambda o, t: (1.0, 2, 3))
    with pytest.raises(ValueError, match="non-negative"):
        L.evaluate(m, (x, y), loss_fn=lambda o, t: (1.0, -1))


def test_loss_helpers_on_token_logits():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(3, 5, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (3, 5), generator=g)
    ref = F.cross_entropy(out.detach().reshape(-1, 5), y.reshape(-1))
    loss = mean_loss(out, y)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-6)
    loss.backward()                                           # differentiable: learned matching trains on it
    assert out.grad is not None and torch.isfinite(out.grad).all()
    total, count = summed_loss(out.detach(), y)
    assert count == 15 and float(total) == pytest.approx(15 * float(ref), rel=1e-6)
    assert token_accuracy(out.detach(), y) == (int((out.argmax(-1) == y).sum()), 15)
    assert torch.isnan(mean_loss(out.detach(), torch.full_like(y, -100)))


def test_repair_of_a_gpt_hits_the_target_statistics_over_all_tokens(pair):
    arch, pa, pb, (x, y) = pair
    m = arch.module(dtype=torch.float64)
    space = ["blocks.0.mlp"]
    fixed = L.repair(m, arch.graph, pa, pb, 0.5, (x, y), spaces=space)
    stats = [L.channel_stats(m, arch.graph, (x, y), p, spaces=space)["blocks.0.mlp"] for p in (pa, pb, fixed)]
    rows = L.space_activations(m, arch.graph, (x, y), fixed, spaces=space)["blocks.0.mlp"]
    assert rows.shape == (x.numel(), 32)                       # one row per token
    for i in (0, 1):
        torch.testing.assert_close(stats[2][i], (stats[0][i] + stats[1][i]) / 2, rtol=1e-7, atol=1e-9)
    curve = L.interpolation_curve(m, pa, pb, (x, y), alphas=3,
                                  adjust=L.repair_adjust(m, arch.graph, pa, pb, (x, y), spaces=space))
    assert curve.loss[1] == pytest.approx(_hand(arch, fixed, x, y)[0], rel=1e-10)
    with pytest.raises(SymmetryError, match="residual"):     # the stream has many writers: name the spaces
        L.repair(m, arch.graph, pa, pb, 0.5, (x, y))


class _NormedTokens(nn.Module):
    """Embedding → BatchNorm1d over channels (all tokens) → Linear: ``(batch, time, vocab)`` logits."""

    def __init__(self, vocab: int = 6, width: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.bn = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.head(self.bn(self.emb(ids).transpose(1, 2)).transpose(1, 2))


def test_batchnorm_reset_of_a_sequence_model_and_its_per_token_curve():
    torch.manual_seed(0)
    a, b = _NormedTokens().double(), _NormedTokens().double()
    pa, pb = a.state_dict(), b.state_dict()
    x, y = _tokens(6, 5, 7, seed=9)
    model = _NormedTokens().double()
    mid = L.interpolate(pa, pb, 0.5)
    reset = L.reset_batchnorm(model, mid, (x, y), batch_size=3)
    h = (1 - 0.5) * pa["emb.weight"] + 0.5 * pb["emb.weight"]
    tokens = h[x].reshape(-1, 4)                              # the BatchNorm's input, one row per token
    torch.testing.assert_close(reset["bn.running_mean"], tokens.mean(0))
    torch.testing.assert_close(reset["bn.running_var"], tokens.var(0, unbiased=True))
    curve = L.interpolation_curve(model, pa, pb, (x, y), alphas=3, adjust=L.batchnorm_adjust(model, (x, y)))
    model.load_state_dict(reset)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert curve.loss[1] == pytest.approx(float(F.cross_entropy(out.reshape(-1, 6), y.reshape(-1))), rel=1e-10)


def test_learned_matching_on_a_gpt_minimises_the_per_token_loss(pair):
    arch, pa, pb, (x, y) = pair
    heads = HeadStructured(2, Permutation())
    classes = {"residual": Permutation(), "blocks.0.mlp": Permutation(), "blocks.0.attn.qk": heads,
               "blocks.0.attn.vo": heads}
    sol = solvers.solve("learned_matching", arch, pa, pb, classes=classes, data=(x, y), steps=4, batch_size=4,
                        seed=0)
    aligned = apply(arch.graph, pb, sol.transforms)
    assert sol.objective_after == pytest.approx(_hand(arch, {k: (pa[k] + aligned[k]) / 2 for k in pa}, x, y)[0],
                                                rel=1e-9)
    assert len(sol.history) == 4 and all(np.isfinite(sol.history))
    assert sol.objective_after <= sol.objective_before
