"""The solver protocol: problem validation at the door, the Solution type, the registry and
third-party solvers (by registration and by entry point)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

import architectures
import solvers
from solvers import registry
from symmetries import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling, SemiPermutation,
                        SignedPermutation, TransformSet, Trivial, identity_transforms, random_transforms)
from symmetries.errors import (ElementShapeError, MissingParameterError, NotAdmittedError, ShapeMismatchError,
                               UnknownParameterError, UnknownSpaceError)


@pytest.fixture
def pair():
    arch = architectures.mlp([5, 7, 6, 3])
    return arch, arch.module(seed=0).state_dict(), arch.module(seed=1).state_dict()


class Shuffle(solvers.Solver):
    """A third-party solver: returns a seeded random permutation at every space."""
    name = "shuffle"
    description = "random permutations (a test plug-in)"
    classes = (Permutation,)

    def solve(self, problem, **options):
        t = random_transforms(problem.graph, problem.seed, classes=problem.classes)
        return solvers.Solution(t, problem.objective(None), problem.objective(t), iterations=1,
                                message=f"options={sorted(options)}")


def test_problem_standardises_inputs(pair):
    arch, a, b = pair
    p = solvers.make_problem(arch, a, {k: v.double() for k, v in b.items()}, seed=3)
    assert p.graph is arch.graph and p.graph_b is arch.graph
    assert p.dtype == torch.float64 and all(v.dtype == torch.float64 for v in p.params_a.values())
    assert p.classes == {"hidden.0": PermutationScaling(), "hidden.1": PermutationScaling()}
    assert p.sizes == {"hidden.0": (7, 7), "hidden.1": (6, 6)}
    assert p.seed == 3 and not p.width_changing
    expected = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    assert p.objective(None) == pytest.approx(expected, rel=1e-12)
    assert all(a[k].dtype == torch.float32 for k in a)  # inputs untouched


def test_problem_rejects_bad_input(pair):
    arch, a, b = pair
    g = arch.graph
    with pytest.raises(NotAdmittedError) as e:
        solvers.make_problem(g, a, b, classes={"hidden.1": Orthogonal()})
    assert e.value.space == "hidden.1"
    with pytest.raises(UnknownSpaceError):
        solvers.make_problem(g, a, b, classes={"nope": Permutation()})
    with pytest.raises(UnknownParameterError):
        solvers.make_problem(g, a, {**b, "extra": torch.zeros(2)})
    with pytest.raises(MissingParameterError):
        solvers.make_problem(g, a, {k: v for k, v in b.items() if k != "layers.0.bias"})
    with pytest.raises(ShapeMismatchError):
        solvers.make_problem(g, a, {**b, "layers.0.weight": torch.zeros(8, 5)})
    with pytest.raises(solvers.SolverInputError):
        solvers.make_problem(g, a, {**b, "layers.0.weight": torch.full((7, 5), float("nan"))})
    bad = TransformSet({"hidden.0": Permutation().identity(6)})
    with pytest.raises(ElementShapeError):
        solvers.make_problem(g, a, b, init=bad)
    with pytest.raises(TypeError, match="valid names: trivial, permutation"):  # ClassSpecError is a TypeError
        solvers.make_problem(g, a, b, classes="permutaton")
    assert solvers.make_problem(g, a, b, classes="permutation").classes == {"hidden.0": Permutation(),
                                                                            "hidden.1": Permutation()}


def test_width_changing_problem_needs_rectangular_classes():
    wide, narrow = architectures.mlp([4, 9, 2]), architectures.mlp([4, 6, 2])
    a, b = wide.module(seed=0).state_dict(), narrow.module(seed=1).state_dict()
    p = solvers.make_problem(wide.graph, a, b, graph_b=narrow.graph, classes={"hidden.0": SemiPermutation()})
    assert p.sizes == {"hidden.0": (9, 6)} and p.width_changing and p.objective(None) is None
    with pytest.raises(solvers.SolverInputError) as e:
        solvers.make_problem(wide.graph, a, b, graph_b=narrow.graph, classes={"hidden.0": Permutation()})
    assert e.value.space == "hidden.0"
    with pytest.raises(solvers.SolverInputError):  # B wider than A
        solvers.make_problem(narrow.graph, b, a, graph_b=wide.graph, classes={"hidden.0": SemiPermutation()})


def test_third_party_solver_registers_and_is_found_by_name(pair):
    arch, a, b = pair
    solvers.register("shuffle-test", Shuffle)
    try:
        assert solvers.get("shuffle-test").name == "shuffle-test"
        info = {i.name: i for i in solvers.available()}["shuffle-test"]
        assert info.classes == ("Permutation",) and "plug-in" in info.description
        sol = solvers.solve("shuffle-test", arch.graph, a, b, classes=Permutation(), seed=5, flavour=1)
        assert isinstance(sol, solvers.Solution) and sol.solver == "shuffle-test"
        assert sol.message == "options=['flavour']" and sol.wall_time > 0
        expected = solvers.make_problem(arch.graph, a, b).objective(sol.transforms)
        assert sol.objective_after == pytest.approx(expected)
        solvers.register("shuffle-test", Shuffle)  # the identical class again: idempotent
        with pytest.raises(ValueError):
            solvers.register("shuffle-test", Shuffle())  # another object under a taken name
        solvers.register("shuffle-test", Shuffle(), replace=True)
    finally:
        solvers.unregister("shuffle-test")
    with pytest.raises(solvers.UnknownSolverError) as e:
        solvers.get("shuffle-test")
    assert "shuffle-test" in str(e.value)


def test_decorated_function_solver_and_callable_method(pair):
    arch, a, b = pair

    @solvers.register("identity-test", classes=(Permutation, PermutationScaling))
    def identity(problem):
        """Leave B as it is."""
        t = identity_transforms(problem.graph)
        return solvers.Solution(t, problem.objective(None), problem.objective(t), status="optimal")

    try:
        sol = solvers.solve("identity-test", arch.graph, a, b)
        assert sol.objective_after == pytest.approx(sol.objective_before) and sol.success
        assert {i.name: i for i in solvers.available()}["identity-test"].description == "Leave B as it is."
        # a callable goes straight in as the method, like scipy's minimize(method=callable)
        sol2 = solvers.solve(identity, arch.graph, a, b)
        assert sol2.solver == "identity"
        assert set(sol.apply(b)) == set(b)
    finally:
        solvers.unregister("identity-test")


def test_unsupported_class_is_a_clear_error(pair):
    arch, a, b = pair
    with pytest.raises(solvers.UnsupportedClassError) as e:
        solvers.solve(Shuffle(), arch.graph, a, b, classes={"hidden.0": PermutationScaling(),
                                                              "hidden.1": Permutation()})
    assert e.value.solver == "shuffle" and e.value.space == "hidden.0" and e.value.cls == PermutationScaling()
    assert "hidden.0" in str(e.value) and "PermutationScaling" in str(e.value)


def test_a_solver_that_needs_data_is_refused_without_it_before_it_runs(pair):
    arch, a, b = pair
    calls = []

    class NeedsData(Shuffle):
        name = "needs-data"
        needs_data = True

        def solve(self, problem, **options):
            calls.append(problem.data)
            return super().solve(problem, **options)

    with pytest.raises(solvers.SolverInputError, match="solver 'needs-data' needs data"):
        solvers.solve(NeedsData(), arch.graph, a, b, classes=Permutation())
    assert calls == []
    x = torch.randn(4, 5)
    assert solvers.solve(NeedsData(), arch.graph, a, b, data=x, classes=Permutation()).iterations == 1
    assert calls[0] is x
    info = {i.name: i for i in solvers.available()}
    assert info["activation_matching"].needs_data and info["learned_matching"].needs_data
    assert not info["weight_matching"].needs_data and not info["relaxation"].needs_data
    with pytest.raises(solvers.SolverInputError, match="needs data"):
        solvers.solve("activation_matching", arch, a, b)


def test_supports_is_exact_membership_not_the_lattice():
    s = Shuffle()
    assert s.supports(Permutation()) and s.supports(Trivial())
    assert not s.supports(SignedPermutation()) and not s.supports(Orthogonal())
    s.classes = (Orthogonal, HeadStructured)
    assert s.supports(Orthogonal()) and not s.supports(Invertible()) and not s.supports(Permutation())
    assert s.supports(HeadStructured(2, Orthogonal())) and not s.supports(HeadStructured(2, Invertible()))
    s.classes = (HeadStructured(4, Permutation()),)  # instances match exactly
    assert s.supports(HeadStructured(4, Permutation())) and not s.supports(HeadStructured(2, Permutation()))


def test_solver_must_return_a_solution(pair):
    arch, a, b = pair
    with pytest.raises(TypeError):
        solvers.solve(lambda problem: {}, arch.graph, a, b)


def test_entry_point_solver_is_loaded_lazily(pair, monkeypatch):
    from importlib.metadata import EntryPoint
    arch, a, b = pair
    module = types.ModuleType("fake_symmetries_plugin")
    module.Shuffle = Shuffle
    monkeypatch.setitem(sys.modules, "fake_symmetries_plugin", module)
    ep = EntryPoint(name="plugin-shuffle", value="fake_symmetries_plugin:Shuffle", group=solvers.ENTRY_POINT_GROUP)
    broken = EntryPoint(name="plugin-broken", value="no_such_module_xyz:Solver", group=solvers.ENTRY_POINT_GROUP)
    seen = []

    def entry_points(group=None, **kw):
        seen.append(group)
        return [ep, broken] if group == solvers.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    try:
        assert "plugin-shuffle" not in registry._REGISTRY
        sol = solvers.solve("plugin-shuffle", arch.graph, a, b, classes=Permutation())
        assert sol.solver == "plugin-shuffle" and seen == [solvers.ENTRY_POINT_GROUP]
        with pytest.warns(RuntimeWarning, match="plugin-broken"):
            names = [i.name for i in solvers.available()]
        assert "plugin-shuffle" in names and "plugin-broken" not in names
    finally:
        solvers.unregister("plugin-shuffle")


def test_cli_lists_solvers():
    from typer.testing import CliRunner

    from symmetries.cli import app
    solvers.register("cli-test-solver", Shuffle)
    try:
        result = CliRunner().invoke(app, ["solvers"], env={"COLUMNS": "200"})
    finally:
        solvers.unregister("cli-test-solver")
    assert result.exit_code == 0, result.output
    for name in ("weight_matching", "semi_permutation", "cli-test-solver"):
        assert name in result.output
    assert "Permutation" in result.output
    assert "needs stds=" in result.output and "needs data" in result.output   # what a call must bring


@pytest.mark.parametrize("packed", [False, True])
def test_objective_equals_distance_after_symmetries_apply(packed):
    """``Problem.objective`` (chunked, fast index paths) against ``symmetries.apply`` directly."""
    from architectures import gpt2
    from symmetries import apply
    cases = [(architectures.mlp([5, 7, 6, 3]), None),
             (gpt2(30, 8, 8, 2, 2, 12, packed_qkv=packed, norm="rms", tie_embeddings=True), None)]
    for arch, classes in cases:
        a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
        b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
        t = random_transforms(arch.graph, 2, classes=classes)
        aligned = apply(arch.graph, b, t)
        expected = sum(float(((a[k] - aligned[k]) ** 2).sum()) for k in a)
        assert solvers.make_problem(arch.graph, a, b).objective(t) == pytest.approx(expected, rel=1e-12)


def _installed_plugin(root, module_source: str, entry_point_line: str, package: str = "my_solvers"):
    """An installed distribution on ``root``: the package and a dist-info with the entry point."""
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    module, _ = entry_point_line.split("=", 1)[1].strip().strip('"').split(":")
    (root / (module.replace(".", "/") + ".py")).write_text(module_source)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    line = entry_point_line.replace('"', "")
    (info / "entry_points.txt").write_text(f"[{solvers.ENTRY_POINT_GROUP}]\n{line}\n")


def test_documented_plugin_installed_with_its_entry_point_is_found(pair, tmp_path, monkeypatch):
    """The one-file example of docs/writing-a-solver.md registers itself at import; installed with the
    documented entry point, loading it registers the identical class again — which is fine."""
    import re
    import warnings
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-solver.md").read_text()
    source = re.findall(r"```python\n(.*?)```", page, flags=re.S)[0]
    line = re.search(r'^greedy = ".*"$', page, flags=re.M).group(0)
    assert 'solvers.register("greedy", Greedy)' in source
    _installed_plugin(tmp_path, source, line)
    monkeypatch.syspath_prepend(str(tmp_path))
    arch, a, b = pair
    try:
        assert "greedy" not in registry._REGISTRY
        assert [ep.value for ep in registry._entry_points() if ep.name == "greedy"] == ["my_solvers.greedy:Greedy"]
        sol = solvers.solve("greedy", arch.graph, a, b, classes=Permutation())
        assert sol.solver == "greedy" and sol.objective_after <= sol.objective_before
        assert type(solvers.get("greedy")).__name__ == "Greedy"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert "greedy" in [i.name for i in solvers.available()]
        greedy = sys.modules["my_solvers.greedy"].Greedy
        solvers.register("greedy", greedy)  # the identical object again: idempotent
        with pytest.raises(ValueError, match="already registered"):
            solvers.register("greedy", Shuffle)  # a different one under a taken name
        with pytest.raises(ValueError, match="already registered"):
            solvers.register("greedy", greedy())  # a different object (an instance) too
    finally:
        solvers.unregister("greedy")
        for name in ("my_solvers.greedy", "my_solvers"):
            sys.modules.pop(name, None)


def test_registering_an_instance_does_not_rename_it():
    s = Shuffle()
    solvers.register("shuffle-a", s)
    solvers.register("shuffle-b", s)
    try:
        assert s.name == "shuffle" and s.classes == (Permutation,)
        assert solvers.get("shuffle-a").name == "shuffle-a" and solvers.get("shuffle-b").name == "shuffle-b"
        solvers.register("shuffle-a", s)  # the same instance again under its name: nothing changes
        solvers.register("shuffle-c", s, classes=(Permutation, PermutationScaling), description="wider")
        assert s.classes == (Permutation,) and s.description == "random permutations (a test plug-in)"
        assert solvers.get("shuffle-c").classes == (Permutation, PermutationScaling)
        with pytest.raises(ValueError):  # the same object with other options is a different registration
            solvers.register("shuffle-a", s, description="other")
    finally:
        for name in ("shuffle-a", "shuffle-b", "shuffle-c"):
            solvers.unregister(name)


def test_init_outside_the_searched_class_is_a_typed_error(pair):
    from symmetries.elements import DenseElement
    arch, a, b = pair
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    rotation = TransformSet({"hidden.0": DenseElement(q, q.T.contiguous())})  # not a symmetry across ReLU
    for name in ("weight_matching", "semi_permutation"):
        with pytest.raises(solvers.SolverInputError) as e:
            solvers.solve(name, arch.graph, a, b, classes=Permutation(), init=rotation, max_iter=0)
        assert e.value.space == "hidden.0" and e.value.cls == Permutation()
        assert "hidden.0" in str(e.value) and "Permutation()" in str(e.value)
    scaled = TransformSet({"hidden.0": PermutationScaling().random(7, seed=1)})
    with pytest.raises(solvers.SolverInputError, match="hidden.0"):  # D·P is admitted, but not searched
        solvers.make_problem(arch.graph, a, b, classes=Permutation(), init=scaled)
    assert solvers.make_problem(arch.graph, a, b, init=scaled).init is not None  # default class: D·P
    perm = TransformSet({"hidden.1": Permutation().random(6, seed=2)})
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), init=perm, max_iter=0,
                        start="identity")
    assert torch.equal(sol.transforms["hidden.1"].as_matrix(), perm["hidden.1"].as_matrix())
    linear = architectures.mlp([5, 7, 3], activation="identity")
    la, lb = linear.module(seed=0).state_dict(), linear.module(seed=1).state_dict()
    q32 = TransformSet({"hidden.0": DenseElement(q.float(), q.T.contiguous().float())})  # float32 round-off
    assert solvers.make_problem(linear.graph, la, lb, classes=Orthogonal(), init=q32).init is not None


def test_integer_tensors_a_space_acts_on_are_a_typed_error_untouched_ones_are_fine():
    arch = architectures.mlp([5, 7, 3])
    a = arch.module(seed=0).state_dict()
    b = {k: (10 * v).round().to(torch.int64) if k == "layers.1.weight" else v
         for k, v in arch.module(seed=1).state_dict().items()}
    with pytest.raises(solvers.SolverInputError) as e:
        solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation())
    assert e.value.parameter == "layers.1.weight" and "int64" in str(e.value) and "'hidden.0'" in str(e.value)
    with pytest.raises(solvers.SolverInputError, match="layers.1.weight"):  # in A too
        solvers.make_problem(arch.graph, b, a)
    # BatchNorm's integer num_batches_tracked: no space acts on it, the problem is fine
    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(),
                                   torch.nn.Linear(7, 3))
    g = architectures.from_module(net(0), torch.randn(4, 5))
    g = getattr(g, "graph", g)
    sa, sb = net(0).state_dict(), net(1).state_dict()
    assert sa["1.num_batches_tracked"].dtype == torch.int64
    sol = solvers.solve("weight_matching", g, sa, sb, classes=Permutation())
    assert sol.objective_after <= sol.objective_before
    assert set(sol.apply(sb)) == set(sb) and sol.apply(sb)["1.num_batches_tracked"].dtype == torch.int64
