"""The solvers' GPU paths (``device="cuda"``): the cost matrices and tensors on the GPU give the alignment
the CPU gives — planted pairs (B a known transform of A plus noise), so the answer is unambiguous and
round-off cannot tie-break differently. Skipped without CUDA (run on a machine that has it)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import architectures
import solvers
from symmetries import HeadStructured, Orthogonal, Permutation, PermutationScaling, apply, random_transforms
from symmetries.checkpoints import INDEX_NAME, align_checkpoints

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _planted(arch, classes, seed=0, noise=1e-3):
    graph = arch.graph
    a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    truth = random_transforms(graph, seed, classes=classes)
    gen = torch.Generator().manual_seed(seed)
    b = {k: v + noise * torch.randn(v.shape, generator=gen, dtype=v.dtype)
         for k, v in apply(graph, a, truth, check=False).items()}
    return a, b, truth.inverse()


def _same_alignment(cpu, gpu, truth, spaces, rtol=1e-6):
    """Both solutions hold the planted permutations (and scales to ``rtol``), and the same ``J``."""
    for s in spaces:
        want, got, here = truth[s].gather_form() if hasattr(truth[s], "gather_form") else truth[s], \
            gpu.transforms[s], cpu.transforms[s]
        if hasattr(got, "gather_form"):
            got, here = got.gather_form(), here.gather_form()
        assert torch.equal(here.index.cpu(), want.index.cpu()) and torch.equal(got.index.cpu(), here.index.cpu()), s
        for x, y in ((here.scales()[0], want.scales()[0]), (got.scales()[0], here.scales()[0])):
            torch.testing.assert_close(x.cpu().double(), y.cpu().double(), rtol=rtol, atol=0)
    assert gpu.objective_after == pytest.approx(cpu.objective_after, rel=1e-6)


@pytest.mark.parametrize("cls", [Permutation(), PermutationScaling()], ids=["permutation", "permutation_scaling"])
def test_weight_matching_on_the_gpu_finds_the_planted_mlp_alignment(cls):
    arch = architectures.mlp([12, 32, 32, 6])
    classes = {s.name: cls for s in arch.graph.spaces()}
    a, b, truth = _planted(arch, classes)
    cpu = solvers.solve("weight_matching", arch, a, b, classes=classes, seed=0)
    gpu = solvers.solve("weight_matching", arch, a, b, classes=classes, seed=0, device="cuda")
    _same_alignment(cpu, gpu, truth, classes, rtol=2e-2 if isinstance(cls, PermutationScaling) else 1e-6)


def test_weight_matching_on_the_gpu_aligns_a_planted_gpt2():
    """Heads, MLP permutations and an orthogonal residual (the cross-product cache, the margin certificate
    and the Procrustes step on the GPU)."""
    arch = architectures.gpt2(60, 8, 32, 4, 2, 64, norm="rms", tie_embeddings=True)
    classes = {s.name: (HeadStructured(s.cls.num_heads, Permutation()) if s.head_group else s.cls)
               for s in arch.graph.spaces()}
    a, b, truth = _planted(arch, classes)
    cpu = solvers.solve("weight_matching", arch, a, b, classes=classes, seed=0)
    gpu = solvers.solve("weight_matching", arch, a, b, classes=classes, seed=0, device="cuda")
    assert isinstance(classes["residual"], Orthogonal)
    _same_alignment(cpu, gpu, truth, [s for s in classes if s != "residual"])
    assert torch.allclose(gpu.transforms["residual"].as_matrix(), truth["residual"].as_matrix(), atol=1e-2)


def test_streamed_alignment_on_the_gpu_writes_the_cpu_result(tmp_path):
    arch = architectures.gpt2(40, 8, 16, 4, 2)
    g = torch.Generator().manual_seed(0)
    pa = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in arch.module().state_dict().items()}
    perm = {s.name: Permutation() for s in arch.graph.spaces() if not s.head_group}
    truth = random_transforms(arch.graph, 1, classes={**perm, **{s.name: HeadStructured(4, Permutation())
                                                               for s in arch.graph.spaces() if s.head_group}})
    pb = {k: v.float() for k, v in apply(arch.graph, pa, truth, check=False).items()}
    folders = []
    for name, params in (("a", pa), ("b", pb)):
        folder = tmp_path / name
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in params.items()}, folder / "model-00001-of-00001.safetensors")
        (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(
            params, "model-00001-of-00001.safetensors")}))
        folders.append(folder)
    cpu = align_checkpoints(*folders, tmp_path / "cpu", arch)
    gpu = align_checkpoints(*folders, tmp_path / "gpu", arch, device="cuda")
    for s in cpu["solution"].transforms:
        assert torch.equal(cpu["solution"].transforms[s].as_matrix(), gpu["solution"].transforms[s].as_matrix()), s
    with safe_open(str(tmp_path / "cpu" / "model-00001-of-00001.safetensors"), framework="pt") as c, \
            safe_open(str(tmp_path / "gpu" / "model-00001-of-00001.safetensors"), framework="pt") as d:
        for k in c.keys():
            assert torch.allclose(c.get_tensor(k), d.get_tensor(k), atol=1e-6), k
