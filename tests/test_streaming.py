"""Streaming alignment of sharded safetensors checkpoints (``lazy=True``, :mod:`symmetries.checkpoints`):
streamed and in-memory weight matching give identical transforms and tensors; the written index and
shards keep B's layout; the CLI aligns folders; nothing is read at the door; refusals name their cause."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import architectures
import solvers
from solvers import SolverInputError
from symmetries.action import apply
from symmetries.checkpoints import INDEX_NAME, ShardedCheckpoint, align_checkpoints, write_sharded
from symmetries.classes import HeadStructured, Invertible, Orthogonal
from symmetries.cli import app
from symmetries.io import CheckpointError

runner = CliRunner()
SPEC = "gpt2:40:8:16:4:2"  # vocab 40, context 8, d 16, 4 heads, 2 layers


def _gpt(**kw):
    return architectures.gpt2(40, 8, 16, 4, 2, **kw)


def _params(arch, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in arch.module().state_dict().items()}


def _write(folder, params, shards=3):
    """HF layout written by safetensors itself (not by the code under test): ``shards`` files + index."""
    folder.mkdir()
    names = list(params)
    step = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: params[k].contiguous() for k in names[i * step:(i + 1) * step]}
        save_file(part, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(v.numel() * 4 for v in params.values()), "note": "kept"},
             "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text('{"model_type": "toy"}')
    return folder


@pytest.fixture()
def pair(tmp_path):
    arch = _gpt()
    pa, pb = _params(arch, 0), _params(arch, 1)
    return arch, pa, pb, _write(tmp_path / "a", pa), _write(tmp_path / "b", pb)


def _read_all(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("classes", [None, "orthogonal"])
def test_streamed_equals_in_memory(tmp_path, monkeypatch, classes, chunk):
    """``chunk``: entries per row block (``solvers.stream.CHUNK``) — 64 makes the 40 × 16 embedding and head
    go in blocks of 4 rows through the scores, ``J`` and the writer, as a vocabulary does at full size."""
    if chunk is not None:
        monkeypatch.setattr("solvers.stream.CHUNK", chunk)
        from solvers.stream import row_chunk
        assert row_chunk(_gpt().graph, "wte.weight", (40, 16)) == 4
    arch = _gpt(norm="rms") if classes else _gpt()
    if classes:
        classes = {s.name: HeadStructured(4, Orthogonal()) for s in arch.graph.spaces() if s.head_group}
        classes["residual"] = Orthogonal()
    pa, pb = _params(arch, 0), _params(arch, 1)
    a, b = _write(tmp_path / "a", pa), _write(tmp_path / "b", pb)
    mem = solvers.solve("weight_matching", arch, pa, pb, classes=classes)
    out = align_checkpoints(a, b, tmp_path / "out", arch, classes=classes)
    lazy = out["solution"]
    assert lazy.history == pytest.approx(mem.history, rel=1e-12, abs=0)
    assert lazy.objective_after == pytest.approx(mem.objective_after, rel=1e-12)
    assert lazy.iterations == mem.iterations and lazy.objective_after < lazy.objective_before
    for s in mem.transforms:
        assert torch.equal(lazy.transforms[s].as_matrix(), mem.transforms[s].as_matrix()), s
    expected = apply(arch.graph, pb, mem.transforms)
    written = _read_all(tmp_path / "out")
    assert set(written) == set(expected)
    for k in expected:
        assert torch.equal(written[k], expected[k].to(written[k].dtype)), k
    from symmetries.landscape import l2_distance
    assert out["l2_before"] == pytest.approx(l2_distance(pa, pb), rel=1e-12)
    assert out["l2_after"] == pytest.approx(l2_distance(pa, expected), rel=1e-12)


def test_written_layout(pair, tmp_path):
    arch, pa, pb, a, b = pair
    align_checkpoints(a, b, tmp_path / "out", arch, metadata={"solver": "weight_matching"})
    out = tmp_path / "out"
    src, dst = json.loads((b / INDEX_NAME).read_text()), json.loads((out / INDEX_NAME).read_text())
    assert dst["weight_map"] == src["weight_map"]
    assert dst["metadata"] == {**src["metadata"], "solver": "weight_matching"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in b.iterdir())  # config.json copied
    assert (out / "config.json").read_text() == (b / "config.json").read_text()
    cb, co = ShardedCheckpoint(b), ShardedCheckpoint(out)
    assert co.layout() == cb.layout()  # shard names, each shard's tensors in data order, __metadata__
    for shard in cb.shards:
        with safe_open(str(out / shard), framework="pt") as h:
            assert h.metadata() == {"format": "pt"}
            assert {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()} == \
                {k: cb.tensor_info(k)[0] for k in cb.shard_tensors(shard)}
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    align_checkpoints(a, b, tmp_path / "again", arch, metadata={"solver": "weight_matching"})
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()} == first  # deterministic bytes


def test_door_reads_nothing_and_solve_streams(pair):
    arch, pa, pb, a, b = pair

    class Counting(ShardedCheckpoint):
        reads: list = []

        def __getitem__(self, name):
            self.reads.append(name)
            return super().__getitem__(name)

    ca, cb = Counting(a), Counting(b)
    problem = solvers.make_problem(arch, ca, cb, lazy=True, solver=solvers.get("weight_matching"))
    assert Counting.reads == [] and problem.lazy
    assert not isinstance(problem.params_a, dict)
    sol = solvers.get("weight_matching").solve(problem)
    assert sol.objective_after < sol.objective_before and len(Counting.reads) > 2 * len(pa)


def test_lazy_dict_equals_in_memory():
    arch = architectures.mlp([6, 24, 24, 3])
    pa, pb = _params(arch, 0), _params(arch, 1)
    mem = solvers.solve("weight_matching", arch, pa, pb, mode="rebasin")
    lazy = solvers.solve("weight_matching", arch, pa, pb, mode="rebasin", lazy=True)
    assert all(torch.equal(lazy.transforms[s].as_matrix(), mem.transforms[s].as_matrix()) for s in mem.transforms)


def test_refusals(pair, tmp_path):
    arch, pa, pb, a, b = pair
    with pytest.raises(SolverInputError, match="cannot search .*Invertible.*Grams"):
        solvers.solve("weight_matching", arch, ShardedCheckpoint(a), ShardedCheckpoint(b), lazy=True,
                      classes={s.name: HeadStructured(4, Invertible()) for s in arch.graph.spaces() if s.head_group})
    mlp = architectures.mlp([6, 24, 3])
    with pytest.raises(SolverInputError, match="hidden.0.*PermutationScaling.*norms"):
        solvers.solve("weight_matching", mlp, _params(mlp, 0), _params(mlp, 1), lazy=True,
                      classes="PermutationScaling")
    with pytest.raises(SolverInputError, match="does not stream"):
        solvers.solve("optimal_transport", mlp, _params(mlp, 0), _params(mlp, 1), lazy=True)
    bad = dict(pb)
    bad["blocks.1.mlp.fc.weight"] = bad["blocks.1.mlp.fc.weight"].clone()
    bad["blocks.1.mlp.fc.weight"][0, 0] = float("nan")
    nan = _write(tmp_path / "nan", bad)
    with pytest.raises(CheckpointError, match=r"blocks.1.mlp.fc.weight' in shard 'model-0000\d-of-00003"):
        align_checkpoints(a, nan, tmp_path / "out", arch)
    assert not (tmp_path / "out" / INDEX_NAME).exists()
    index = json.loads((b / INDEX_NAME).read_text())
    index["weight_map"]["wte.weight"] = "model-00009-of-00009.safetensors"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard 'model-00009-of-00009.safetensors' .* does not exist"):
        ShardedCheckpoint(tmp_path / "broken")
    index["weight_map"]["wte.weight"] = "../evil.safetensors"
    (tmp_path / "broken" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a file name"):
        ShardedCheckpoint(tmp_path / "broken")


def test_write_sharded_checks_tensors(tmp_path):
    layout = [("s.safetensors", {}, ["x"])]
    with pytest.raises(CheckpointError, match="'x' is \\(3,\\)"):
        write_sharded(tmp_path, layout, lambda n: ((2,), torch.float32), lambda n: torch.zeros(3))
    assert list(tmp_path.iterdir()) == []  # no partial shard


def test_cli_round_trip(pair, tmp_path):
    arch, pa, pb, a, b = pair
    out = tmp_path / "aligned"
    result = runner.invoke(app, ["align", str(a), str(b), "--arch", SPEC, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["streamed"] and summary["l2_after"] < summary["l2_before"]
    mem = solvers.solve("weight_matching", arch, pa, pb)
    expected = apply(arch.graph, pb, mem.transforms)
    written = _read_all(out)
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert json.loads((out / INDEX_NAME).read_text())["metadata"]["source"] == str(b)
    again = runner.invoke(app, ["align", str(a), str(b), "--arch", SPEC, "-o", str(b)])
    assert again.exit_code == 2 and "wouldreplacethatinput" in "".join(again.output.split())
    (tmp_path / "file").write_text("x")
    again = runner.invoke(app, ["align", str(a), str(b), "--arch", SPEC, "-o", str(tmp_path / "file")])
    assert again.exit_code == 2 and "isafile" in "".join(again.output.split())
    again = runner.invoke(app, ["align", str(a), str(b), "--arch", SPEC, "-o", str(tmp_path / "o2"),
                                "--solver", "optimal_transport"])
    assert again.exit_code == 2 and "doesnotstream" in "".join(again.output.split())


def test_transformers_loads_the_aligned_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from architectures.hf_gpt2 import hf_gpt2, hf_gpt2_config

    config = hf_gpt2_config(vocab_size=40, n_positions=8, n_embd=16, n_head=4, n_layer=2)
    arch = hf_gpt2(config)
    models = []
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config).eval()
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        folder = _write(tmp_path / name, params)
        config.save_pretrained(folder)
        models.append(model)
    align_checkpoints(tmp_path / "a", tmp_path / "b", tmp_path / "out", arch)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.arange(8).reshape(1, 8) % 40
    with torch.no_grad():
        before, after = models[1](ids).logits, loaded(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)  # the aligned B computes B's function
    assert not torch.equal(loaded.transformer.h[0].mlp.c_fc.weight, models[1].transformer.h[0].mlp.c_fc.weight)
