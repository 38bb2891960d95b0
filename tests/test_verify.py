"""`symmetries verify`: run as a separate process against user model files written into tmp_path
(a file path and a module path), exit 0 when the declared symmetries hold, 1 naming the space when
one does not, 2 on unusable input; --json is machine-readable. In-process runs (typer's runner)
cover every builder and the wrong declarations."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from symmetries.cli import app

USER_MODEL = textwrap.dedent('''
    import dataclasses

    import torch
    from torch import nn

    import architectures
    import symmetries as sy


    class Net(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(4, 8), act, nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))


    def relu_net():
        torch.manual_seed(0)
        return Net(nn.ReLU()), torch.randn(5, 4)


    def gelu_mlp():  # keys layers.i.*, as architectures.mlp builds them
        return architectures.mlp([4, 6, 5, 3], "gelu").module(seed=0), torch.randn(5, 4)


    def bare_module():
        return Net(nn.ReLU())


    def wrong_transformer():  # orthogonal residual declared without the LayerNorm rewrite
        arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=6)
        graph = arch.graph.with_classes({"residual": sy.Orthogonal()})
        return dataclasses.replace(arch, graph=graph)  # keeps the builder's example inputs


    def rms_transformer():
        return architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=6, norm="rms")
''')


def _command() -> list[str]:
    script = Path(sys.executable).parent / "symmetries"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from symmetries.cli import main; main()"]


REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # nothing of the checkout on sys.path but what the installation provides
    return env


def _run(args, cwd, command=None) -> subprocess.CompletedProcess:
    return subprocess.run((command or _command()) + ["verify", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


ISOLATION_CHECK = textwrap.dedent('''
    import importlib.util, sys
    from pathlib import Path
    import symmetries

    REPO, EXPECT_PACKAGE_UNDER = Path({repo!r}), {package!r}

    def isolated():
        """A factory that refuses to run if the checkout (repo root or tests/) is on sys.path."""
        entries = {{Path(p or ".").resolve() for p in sys.path}}
        assert REPO not in entries and REPO / "tests" not in entries, sys.path
        assert importlib.util.find_spec("arch_checks") is None, "the tests folder is importable"
        here = Path(symmetries.__file__).resolve()
        assert EXPECT_PACKAGE_UNDER is None or Path(EXPECT_PACKAGE_UNDER).resolve() in here.parents, here
        from user_models import relu_net
        return relu_net()
''')


@pytest.fixture()
def user_file(tmp_path) -> Path:
    path = tmp_path / "user_models.py"
    path.write_text(USER_MODEL)
    return path


def test_subprocess_passes_on_a_file_path_and_fails_naming_the_space(user_file, tmp_path):
    ok = _run([f"{user_file}:relu_net", "--examples", "3"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "fc1" in ok.stdout and "PermutationScaling" in ok.stdout and "all declared symmetries hold" in ok.stdout
    bad = _run([f"{user_file}:gelu_mlp", "--arch", "mlp:4,6,5,3:relu", "--seed", "3"], cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout
    assert "space `hidden.0` declared PermutationScaling" in bad.stdout and "activation is relu" in bad.stdout


def test_subprocess_json_with_a_module_path(user_file, tmp_path):
    res = _run(["user_models:wrong_transformer", "--json", "--examples", "2"], cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["passed"] is False and data["target"] == "user_models:wrong_transformer"
    failing = {c["space"] for c in data["checks"] if c["verdict"] == "FAIL"}
    assert "residual" in failing and failing <= {"residual", "(all spaces)"}
    row = next(c for c in data["checks"] if c["space"] == "residual")
    assert row["cls"] == "Orthogonal" and row["max_error"] > row["tolerance"]


def test_subprocess_runs_in_a_temporary_folder_without_the_checkout_on_sys_path(user_file, tmp_path):
    (tmp_path / "isolation.py").write_text(ISOLATION_CHECK.format(repo=str(REPO), package=None))
    res = _run(["isolation:isolated", "--examples", "2"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all declared symmetries hold" in res.stdout


def _fresh_install(root: Path) -> Path:
    """A fresh virtual environment holding a wheel built from this working tree (dependencies:
    the running environment's site-packages, added by a ``.pth`` path line, which does not run that
    folder's editable-install hook). Returns the environment's python."""
    import shutil
    import sysconfig
    import zipfile
    pytest.importorskip("setuptools")
    src = root / "src"
    for name in ("symmetries", "solvers", "architectures"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr[-300:]}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (wheel,) = (root / "dist").glob("symmetries-*.whl")
    zipfile.ZipFile(wheel).extractall(purelib)
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_the_command_runs_from_a_freshly_built_wheel_in_a_fresh_environment(user_file, tmp_path):
    python = _fresh_install(tmp_path / "env")
    work = tmp_path / "work"
    work.mkdir()
    (work / "user_models.py").write_text(user_file.read_text())
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (work / "isolation.py").write_text(ISOLATION_CHECK.format(repo=str(REPO), package=purelib))
    command = [str(python), "-c", "from symmetries.cli import main; main()"]
    ok = _run(["isolation:isolated", "--examples", "2"], cwd=work, command=command)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _run(["user_models.py:gelu_mlp", "--arch", "mlp:4,6,5,3:relu", "--seed", "3"], cwd=work, command=command)
    assert bad.returncode == 1 and "space `hidden.0` declared PermutationScaling" in bad.stdout, bad.stdout + bad.stderr


def test_subprocess_unusable_input_exits_2(user_file, tmp_path):
    res = _run([f"{user_file}:bare_module"], cwd=tmp_path)
    assert res.returncode == 2 and "example_inputs" in res.stderr
    res = _run(["no_such_module:factory"], cwd=tmp_path)
    assert res.returncode == 2 and "cannot import" in res.stderr


# -- in process -------------------------------------------------------------------------------------------------
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, ["verify", *args], env={"COLUMNS": "200"})


BUILDERS = {
    "mlp_tanh": "architectures.mlp([4, 6, 5, 3], 'tanh')",
    "vgg_bn": "architectures.vgg((4, 'M', 5), in_channels=2, batchnorm=True, hidden=(6,))",
    "resnet": "architectures.resnet(8, channels=(3, 4), in_channels=2)",
    "gcn": "architectures.gcn([3, 5, 4, 2], 'leaky_relu')",
    "gpt2": "architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=6, packed_qkv=True)",
    "vit_rms": "architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=1, norm='rms')",
    "hf_gpt2": "architectures.hf_gpt2(n_embd=8, n_head=2, n_layer=1, vocab_size=13, n_positions=6)",  # tied lm_head
}


@pytest.fixture()
def builders_file(tmp_path) -> Path:
    lines = ["import dataclasses", "import architectures", "from architectures.transformer import RESIDUAL",
             "from arch_checks import split_space"]
    for name, expr in BUILDERS.items():
        lines.append(f"def {name}():\n    return {expr}")
    lines.append(textwrap.dedent('''
        def split_resnet():
            arch = architectures.resnet(8, channels=(3, 4), in_channels=2)
            moved = ["layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.bn2.bias",
                     "layer1.0.bn2.running_mean", "layer1.0.bn2.running_var"]
            graph = split_space(arch.graph, "stream.0", moved)
            return dataclasses.replace(arch, graph=graph)
    '''))
    path = tmp_path / "builders_models.py"
    path.write_text("\n\n".join(lines))
    return path


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_passes(builders_file, name):
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    res = _invoke(f"{builders_file}:{name}", "--examples", "2", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["passed"] and data["examples"] >= 2 and all(c["verdict"] == "pass" for c in data["checks"])
    assert data["graph"].startswith("architecture")


def test_a_split_resnet_stream_fails_naming_it(builders_file):
    res = _invoke(f"{builders_file}:split_resnet", "--examples", "3")
    assert res.exit_code == 1, res.output
    assert "space `stream.0" in res.output and "FAIL" in res.output


def test_from_module_graph_for_a_builder_module(tmp_path):
    (tmp_path / "fm.py").write_text(textwrap.dedent('''
        import torch, architectures
        def model():
            return architectures.mlp([4, 6, 3], "gelu").module(seed=0), torch.randn(3, 4)
    '''))
    res = _invoke(f"{tmp_path / 'fm.py'}:model", "--dtype", "float32")
    assert res.exit_code == 0, res.output
    assert "from_module" in res.output and "float32" in res.output and "Permutation" in res.output


def test_bad_options_and_targets_exit_2(tmp_path, user_file):
    assert _invoke(f"{user_file}:relu_net", "--dtype", "float8").exit_code == 2
    assert _invoke("no_colon_here").exit_code == 2
    assert _invoke(f"{user_file}:missing_factory").exit_code == 2
    (tmp_path / "shapes.py").write_text("import torch\nfrom user_models import Net\n"
                                        "def wrong_inputs():\n    return Net(torch.nn.ReLU()), torch.randn(2, 7)\n")
    res = _invoke(f"{tmp_path / 'shapes.py'}:wrong_inputs")
    assert res.exit_code == 2 and "cannot be multiplied" in res.output
    res = _invoke(f"{user_file}:relu_net", "--arch", "vgg:4,8")  # a graph that does not fit the model
    assert res.exit_code == 2 and "not in graph" in res.output


def test_docs_page_examples_run():
    import re
    page = Path(__file__).resolve().parents[1] / "docs" / "verify.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(page), "exec"), namespace)
        for name, fn in namespace.items():
            if name.startswith("test_") and callable(fn):
                fn()


def test_a_user_module_with_tied_weights_passes_with_its_from_module_graph(tmp_path):
    (tmp_path / "tied.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class TiedLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb, self.fc, self.out = nn.Embedding(11, 6), nn.Linear(6, 6), nn.Linear(6, 11, bias=False)
                self.out.weight = self.emb.weight

            def forward(self, t):
                return self.out(torch.relu(self.fc(self.emb(t))))

        def model():
            torch.manual_seed(0)
            return TiedLM(), torch.randint(0, 11, (3, 5))
    '''))
    res = _invoke(f"{tmp_path / 'tied.py'}:model", "--examples", "2")
    assert res.exit_code == 0, res.output
    assert "from_module" in res.output and "all declared symmetries hold" in res.output


@pytest.mark.parametrize("dtype", ["float64", "float32", "model"])
def test_from_module_traces_with_inputs_cast_to_the_model_dtype(tmp_path, dtype):
    (tmp_path / "mixed.py").write_text(textwrap.dedent('''
        import torch, architectures
        def model():  # a float32 module with float64 example inputs
            return architectures.mlp([4, 6, 3], "relu").module(seed=0), torch.randn(3, 4, dtype=torch.float64)
    '''))
    res = _invoke(f"{tmp_path / 'mixed.py'}:model", "--dtype", dtype, "--examples", "2")
    assert res.exit_code == 0, res.output
    assert "from_module" in res.output and ("float32" if dtype != "float64" else "float64") in res.output


# -- hardening (issue 12): never exit 0 having checked nothing; seeded factories --------------------------------
EXITING = textwrap.dedent('''
    import sys, torch
    from torch import nn
    from user_models import Net

    def exits_zero():
        sys.exit(0)

    def raises_system_exit():
        raise SystemExit("bye")

    class Quitter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            sys.exit(0)

    def forward_exits():
        return Quitter(), torch.zeros(2, 4)

    def returns_int():
        return 3

    def returns_none():
        return None

    def returns_triple():
        return Net(nn.ReLU()), torch.zeros(2, 4), "extra"

    def returns_inputs_first():
        return torch.zeros(2, 4), Net(nn.ReLU())
''')


@pytest.fixture()
def exiting_file(tmp_path, user_file, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    path = tmp_path / "exiting.py"
    path.write_text(EXITING)
    return path


@pytest.mark.parametrize("factory", ["exits_zero", "raises_system_exit", "forward_exits", "returns_int",
                                     "returns_none", "returns_triple", "returns_inputs_first"])
def test_user_code_that_exits_or_returns_no_model_is_exit_2_naming_the_target(exiting_file, factory):
    target = f"{exiting_file}:{factory}"
    res = _invoke(target)
    assert res.exit_code == 2, res.output
    assert target in "".join(res.output.split()) and "error:" in res.output, res.output
    if factory in ("exits_zero", "raises_system_exit", "forward_exits"):
        assert "sys.exit" in res.output and "nothing was checked" in " ".join(res.output.split()), res.output
    js = _invoke(target, "--json")
    assert js.exit_code == 2
    data = json.loads(js.stdout)
    assert data["target"] == target and data["error"], js.output


def test_a_module_that_exits_on_import_is_exit_2(tmp_path):
    (tmp_path / "exit_on_import.py").write_text("import sys\nsys.exit(0)\ndef build():\n    pass\n")
    res = _invoke(f"{tmp_path / 'exit_on_import.py'}:build", "--json")
    assert res.exit_code == 2 and "sys.exit(0)" in json.loads(res.stdout)["error"], res.output


def test_subprocess_sys_exit_in_the_factory_is_exit_2(tmp_path):
    (tmp_path / "quits.py").write_text("import sys\ndef build():\n    sys.exit(0)\n")
    res = _run(["quits:build", "--json"], cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert json.loads(res.stdout)["target"] == "quits:build"


def test_arch_spec_factories_that_exit_or_return_a_module_are_refused(tmp_path, user_file, monkeypatch):
    from architectures.spec import ArchSpecError, parse_arch
    (tmp_path / "spec_factories_h12.py").write_text(textwrap.dedent('''
        import sys, torch
        def exits():
            sys.exit(0)
        def module():
            return torch.nn.Linear(2, 2)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ArchSpecError, match=r"spec_factories_h12:exits\(\) called sys.exit\(0\)"):
        parse_arch("spec_factories_h12:exits")
    with pytest.raises(ArchSpecError, match="returned a Linear.*from_module"):
        parse_arch("spec_factories_h12:module")
    (tmp_path / "spec_import_exits_h12.py").write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ArchSpecError, match="SystemExit"):
        parse_arch("spec_import_exits_h12:build")
    res = _invoke(f"{user_file}:relu_net", "--arch", "spec_factories_h12:exits")
    assert res.exit_code == 2 and "sys.exit(0)" in res.output, res.output


UNSEEDED = textwrap.dedent('''
    import torch
    from user_models import Net

    def unseeded():   # draws its weights and inputs from torch's global generator
        return Net(torch.nn.ReLU()), torch.randn(5, 4)

    def seeded():
        torch.manual_seed(0)
        return Net(torch.nn.ReLU()), torch.randn(5, 4)
''')


def test_verify_repeats_with_an_unseeded_factory_and_says_so(tmp_path, user_file, monkeypatch):
    import torch
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    (tmp_path / "seeding.py").write_text(UNSEEDED)
    runs = []
    for _ in range(2):
        torch.randn(3)   # the caller's generator state differs between the runs
        res = _invoke(f"{tmp_path / 'seeding.py'}:unseeded", "--json", "--examples", "2")
        assert res.exit_code == 0, res.output
        runs.append(json.loads(res.stdout))
    for r in runs:
        r.pop("seconds")
    assert runs[0] == runs[1]                           # the same report, error for error
    assert any("without seeding it" in n for n in runs[0]["notes"]), runs[0]["notes"]
    state = torch.get_rng_state()
    table = _invoke(f"{tmp_path / 'seeding.py'}:unseeded", "--examples", "2")
    assert "note:" in table.output and "without seeding it" in " ".join(table.output.split())
    assert torch.equal(state, torch.get_rng_state())    # the caller's generator is restored
    seeded = _invoke(f"{tmp_path / 'seeding.py'}:seeded", "--json", "--examples", "2")
    assert seeded.exit_code == 0 and json.loads(seeded.stdout)["notes"] == [], seeded.output


def test_docs_page_examples_seed_their_inputs():
    import re
    page = (Path(__file__).resolve().parents[1] / "docs" / "verify.md").read_text()
    code = "".join(re.findall(r"```python\n(.*?)```", page, flags=re.S))
    draws = re.findall(r"torch\.rand\w*\((.*?)\)\s*[,)\n]", code)
    assert all("generator=" in d for d in draws), draws
