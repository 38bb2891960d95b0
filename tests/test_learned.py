"""Learned matching (straight-through estimator): lowers the midpoint loss below weight matching's."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import architectures
import solvers
from solvers.errors import SolverInputError, UnsupportedClassError
from solvers.algorithms.learned import midpoint_loss
from symmetries.action import apply
from symmetries.classes import HeadStructured, Invertible, Orthogonal, Permutation
from symmetries.demo.data import digits

CE = torch.nn.functional.cross_entropy


@pytest.fixture(scope="module")
def trained_pair():
    """Two small MLPs trained on sklearn digits from different seeds (full-batch Adam, ~1 s)."""
    torch.manual_seed(0)
    d = digits()
    x, y = d.train
    arch = architectures.mlp([64, 32, 32, 10])
    params = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = arch.module(seed=seed)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(150):
            opt.zero_grad()
            CE(m(x), y).backward()
            opt.step()
        params.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    return arch, params[0], params[1], d


def test_learned_matching_beats_weight_matching_at_the_midpoint(trained_pair):
    arch, pa, pb, d = trained_pair
    wm = solvers.solve("weight_matching", arch, pa, pb, classes=Permutation())
    module = arch.module()
    wm_mid = midpoint_loss(module, arch.graph, pa, pb, wm.transforms, [d.train], CE)
    naive_mid = midpoint_loss(module, arch.graph, pa, pb, {}, [d.train], CE)
    sol = solvers.solve("learned_matching", arch, pa, pb, classes=Permutation(), data=d.train, steps=200, seed=0)
    assert sol.objective_before == pytest.approx(wm_mid, rel=1e-5)  # starts from weight matching
    assert sol.extra["kept"] == "learned"
    assert sol.objective_after < wm_mid - 0.005 < naive_mid
    recomputed = midpoint_loss(module, arch.graph, pa, pb, sol.transforms, [d.train], CE)
    assert recomputed == pytest.approx(sol.objective_after, rel=1e-5)
    # the result is a genuine symmetry: B's function is unchanged by it
    for el in sol.transforms.values():
        assert Permutation().contains(el)
    aligned = apply(arch.graph, pb, sol.transforms)
    mb, mt = arch.module(), arch.module()
    mb.load_state_dict(pb)
    mt.load_state_dict(aligned)
    x = d.test[0]
    assert torch.allclose(mb(x), mt(x), rtol=2e-5, atol=2e-5)
    assert all(torch.equal(v, trained_pair[2][k]) for k, v in pb.items())


def test_dataloader_and_custom_loss(trained_pair):
    arch, pa, pb, d = trained_pair
    loader = DataLoader(TensorDataset(*d.train), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        return CE(out, y)

    sol = solvers.solve("learned_matching", arch, pa, pb, classes=Permutation(), data=loader, loss_fn=loss_fn,
                        steps=30)
    assert len(calls) >= 30 and len(sol.history) == 30
    assert sol.extra["kept"] == "learned" and sol.objective_after < sol.objective_before - 1e-3
    assert sol.objective_before == pytest.approx(sol.extra["start_midpoint_loss"])


def test_orthogonal_spaces_on_a_linear_network():
    torch.manual_seed(0)
    arch = architectures.mlp([6, 5, 5, 3], activation="identity")
    x = torch.randn(200, 6, dtype=torch.float64)
    y = torch.randn(200, 3, dtype=torch.float64)
    pa = arch.module(seed=0, dtype=torch.float64).state_dict()
    pb = arch.module(seed=1, dtype=torch.float64).state_dict()
    sol = solvers.solve("learned_matching", arch, pa, pb, classes=Orthogonal(), data=(x, y),
                        loss_fn=torch.nn.functional.mse_loss, steps=40, lr=0.02)
    assert sol.extra["kept"] == "learned" and sol.objective_after < sol.objective_before - 0.01
    assert any(not torch.equal(sol.transforms[s].as_matrix(), torch.eye(5, dtype=torch.float64))
               for s in sol.transforms)
    for el in sol.transforms.values():
        assert Orthogonal().contains(el, atol=1e-8)


def test_head_structured_spaces_share_one_head_permutation():
    arch = architectures.gpt2(13, 6, 8, 2, 1, 16)
    classes = {s.name: HeadStructured(2, Orthogonal()) if isinstance(s.cls, HeadStructured) else s.cls
               for s in arch.graph.spaces()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 13, (32, 6), generator=g), torch.randint(0, 13, (32, 6), generator=g)
    pa, pb = arch.module(seed=0).state_dict(), arch.module(seed=1).state_dict()

    def lm_loss(out, t):
        return CE(out.reshape(-1, out.shape[-1]), t.reshape(-1))

    sol = solvers.solve("learned_matching", arch, pa, pb, classes=classes, data=(x, y), loss_fn=lm_loss, steps=15)
    assert sol.extra["kept"] == "learned" and sol.objective_after < sol.objective_before - 0.01
    qk, vo = sol.transforms["blocks.0.attn.qk"], sol.transforms["blocks.0.attn.vo"]
    assert torch.equal(qk.head_perm, vo.head_perm)
    mb, mt = arch.module(), arch.module()
    mb.load_state_dict(pb)
    mt.load_state_dict(apply(arch.graph, pb, sol.transforms))  # validates the head-group tie
    assert torch.allclose(mb(x), mt(x), atol=1e-4)


def test_held_out_selection_data_decides_between_learned_and_weight_matching(trained_pair):
    arch, pa, pb, d = trained_pair
    module = arch.module()
    wm = solvers.solve("weight_matching", arch, pa, pb, classes=Permutation())
    sol = solvers.solve("learned_matching", arch, pa, pb, classes=Permutation(), data=d.train, steps=100, seed=0,
                        selection_data=d.test)
    held_out_wm = midpoint_loss(module, arch.graph, pa, pb, wm.transforms, [d.test], CE)
    held_out = midpoint_loss(module, arch.graph, pa, pb, sol.transforms, [d.test], CE)
    assert sol.objective_before == pytest.approx(held_out_wm, rel=1e-5)  # measured on the held-out split
    assert sol.objective_after == pytest.approx(held_out, rel=1e-5) and sol.objective_after <= sol.objective_before
    assert sol.extra["selection"] == "selection_data"
    if sol.extra["kept"] == "learned":
        assert held_out < held_out_wm
        assert sol.extra["final_midpoint_loss"] == pytest.approx(held_out, rel=1e-5)


def _cnn_data(channels=2, n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("build", [
    lambda: architectures.vgg((4, "M", 5), in_channels=2, num_classes=3, batchnorm=True),
    lambda: architectures.resnet(8, channels=(3, 4), in_channels=2, num_classes=3),
], ids=["vgg_bn", "resnet"])
def test_batchnorm_models_learn_a_function_preserving_permutation(build):
    """Running statistics (a variance: monomial maps only) take the hard projection; the gradient flows
    through the parameters."""
    arch = build()
    x, y = _cnn_data()
    g = torch.Generator().manual_seed(1)
    pa, pb = arch.module(seed=0).state_dict(), arch.module(seed=1).state_dict()
    for p in (pa, pb):  # generic running statistics (fresh BatchNorm: mean 0, variance 1)
        for k in p:
            if k.endswith("running_mean"):
                p[k] = torch.randn(p[k].shape, generator=g)
            elif k.endswith("running_var"):
                p[k] = torch.rand(p[k].shape, generator=g) + 0.5
    before = {k: v.clone() for k, v in pb.items()}
    sol = solvers.solve("learned_matching", arch, pa, pb, classes=Permutation(), data=(x, y), steps=25, lr=0.1,
                        seed=0)
    assert len(sol.history) == 25 and all(map(lambda v: v == v, sol.history))
    assert sol.objective_after <= sol.objective_before
    for el in sol.transforms.values():
        assert Permutation().contains(el)
    mb, mt = arch.module(), arch.module()
    mb.load_state_dict(pb)
    mt.load_state_dict(apply(arch.graph, pb, sol.transforms))
    with torch.no_grad():
        assert torch.allclose(mb.eval()(x), mt.eval()(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], pb[k]) for k in pb)


def test_train_mode_batchnorm_modules_leave_the_inputs_untouched():
    arch = architectures.vgg((4, "M", 5), in_channels=2, num_classes=3, batchnorm=True)
    ma, mb = arch.module(seed=0).train(), arch.module(seed=1).train()
    pa, pb = ma.state_dict(), mb.state_dict()
    copies = {k: v.clone() for k, v in {**pa, **{"b." + k: v for k, v in pb.items()}}.items()}
    sol = solvers.solve("learned_matching", arch.graph, pa, pb, classes=Permutation(), data=_cnn_data(), steps=10,
                        models=(ma, mb))
    assert len(sol.history) == 10
    assert all(torch.equal(pa[k], copies[k]) for k in pa)  # num_batches_tracked was incremented in place
    assert all(torch.equal(pb[k], copies["b." + k]) for k in pb)


def test_batchnorm_gradient_reaches_the_latents_of_every_space():
    from solvers.algorithms.learned import project_latents
    from solvers.problem import make_problem
    arch = architectures.vgg((4, "M", 5), in_channels=2, num_classes=3, batchnorm=True)
    pa, pb = arch.module(seed=0).state_dict(), arch.module(seed=1).state_dict()
    problem = make_problem(arch.graph, pa, pb, classes=Permutation())
    latents = {s: torch.eye(problem.sizes[s][0]).requires_grad_(True) for s in problem.spaces}
    from solvers.algorithms.learned import _align, _hard_keys
    keys = _hard_keys(problem.graph, pb, arch.module())
    assert {k for k in pb if "running" in k or "num_batches" in k} == keys
    aligned = _align(problem.graph, pb, project_latents(problem.graph, latents, problem.classes), latents, keys)
    x, y = _cnn_data()
    CE(torch.func.functional_call(arch.module(), aligned, (x,)), y).backward()
    assert all(lat.grad is not None and float(lat.grad.abs().sum()) > 0 for lat in latents.values())
    assert all(not aligned[k].requires_grad for k in aligned if "running" in k)


def test_refuses_missing_data_and_unsupported_classes(trained_pair):
    arch, pa, pb, d = trained_pair
    with pytest.raises(SolverInputError, match="data"):
        solvers.solve("learned_matching", arch, pa, pb, classes=Permutation())
    with pytest.raises(SolverInputError, match="models"):
        solvers.solve("learned_matching", arch.graph, pa, pb, classes=Permutation(), data=d.train)
    gpt = architectures.gpt2(13, 6, 8, 2, 1, 16)
    with pytest.raises(UnsupportedClassError, match="attn"):
        solvers.solve("learned_matching", gpt, gpt.module(seed=0).state_dict(), gpt.module(seed=1).state_dict(),
                      classes={"blocks.0.attn.qk": HeadStructured(2, Invertible())}, data=(torch.zeros(2, 6).long(),) * 2)
