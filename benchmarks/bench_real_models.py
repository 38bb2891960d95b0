"""Real model definitions through extraction, verification and weight matching: a table.

For each model (torchvision, timm, Hugging Face from small configs, torch.nn transformers and RNNs;
random weights plus 20% generic noise on every parameter, nothing downloaded) the script prints one row:

* **extract** — ``ok`` (``architectures.from_module``; ``from_hf`` for Hugging Face; the declared
  graph of ``architectures.hf_llama`` for the Llama family) or the typed refusal: the node and why;
  with a refusal, the rest of the row is measured on the graph ``unknown="fixed"`` gives (the
  refused region without symmetry): what a user gets who opts out;
* **spaces** — spaces found / how many admit a non-trivial class (``fixed:`` with ``unknown="fixed"``);
* **invariance** — the largest output change (float64) over one random transform of every admitted
  class of every space, each space alone, and all spaces at once (``check_invariance(examples=1)``);
* **align** — weight matching of two random seeds with each space's standard class
  (permutations; head permutations for attention) — with ``--scaling``, ``PermutationScaling`` (the
  full ReLU group) at every space that admits it — one thread, computation in ``--align-dtype``;
  seconds and sweeps;
* **kept** — ``max |f(T·θ_B) − f(θ_B)|`` in float64 after applying the solved transforms.

Each model runs in its own process with a time limit (``--timeout``): a model that fails, crashes or
runs out of time is reported as such and the table goes on. ``--profile NAME`` prints, for those
models, where weight matching spends its time, per space: building the local problem (cross products
of the tensors meeting the space, with the other spaces' transforms applied) and solving it (LAP,
head assignment), plus the objective evaluations. Needs torchvision and timm (not in the project's
CI environment)::

    python benchmarks/bench_real_models.py                      # every model
    python benchmarks/bench_real_models.py -k resnet vit        # names containing any of these
    python benchmarks/bench_real_models.py -k tv/vgg11_bn --profile tv/vgg11_bn --timeout 1200
    python benchmarks/bench_real_models.py --out table.md       # also write the table (Markdown)
    python benchmarks/bench_real_models.py -k squeezenet vgg --no-invariance --scaling --align-dtype float64
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_mod
import re
import sys
import time
import traceback

import torch
from torch import nn

from space_timer import SpaceTimer

IMG = 64  # convnets that accept it
VIT = 224  # torchvision and timm ViTs at their native size


# -- model definitions -------------------------------------------------------------------------------
def _images(size):
    """A batch of 2 images (1 at 224: a float64 ViT-B forward takes seconds on one loaded core)."""
    return lambda: torch.randn(1 if size >= VIT else 2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _tv(name, size=IMG, **kw):
    def build():
        import torchvision
        return getattr(torchvision.models, name)(weights=None, **kw)
    return dict(build=build, inputs=_images(size), kind="fx")


def _timm(name, size=IMG, **kw):
    def build():
        import timm
        return timm.create_model(name, pretrained=False, **kw)
    return dict(build=build, inputs=_images(size), kind="fx")


HF_TEXT = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=32)
LLAMA = dict(vocab_size=100, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
             max_position_embeddings=32)


def _ids():
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))


def _hf(make):
    def build():
        import transformers as T
        return make(T)
    return build


def _llama_family(family, **extra):
    """``architectures.hf_llama``: the declared graph on HF's names; ``.module()`` the HF model."""
    def arch():
        import architectures
        return architectures.hf_llama(family=family, **LLAMA, **extra)
    return dict(arch=arch, inputs=_ids, kind="arch", exact_norm=True,
                note="hf_llama (declared graph); RMSNorm kept in float64, SDPA")


def _llama_export(family, **extra):
    def build():
        import architectures
        m = architectures.hf_llama(family=family, **LLAMA, **extra).module()
        m.set_attn_implementation("sdpa")
        return m
    return dict(build=build, inputs=_ids, kind="hf", exact_norm=True, note="from_hf (export); RMSNorm kept in float64")


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` (2 layers, batch first) between two linear maps."""

    def __init__(self, norm_first=False):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.inp, self.enc, self.out = nn.Linear(8, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), \
            nn.Linear(32, 5)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)))


class Recurrent(nn.Module):
    """Embedding → ``nn.LSTM``/``nn.GRU`` (2 layers) → linear head on every step."""

    def __init__(self, cell):
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(50, 16), cell(16, 24, num_layers=2, batch_first=True), \
            nn.Linear(24, 7)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


def _tokens():
    return torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))


def _seq():
    return torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(0))


MODELS: dict[str, dict] = {
    **{f"tv/{n}": _tv(n) for n in ("resnet18", "resnet50", "resnext50_32x4d", "regnet_y_400mf", "mobilenet_v2",
                                   "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121",
                                   "squeezenet1_1", "shufflenet_v2_x0_5", "vgg11_bn")},
    "tv/googlenet": _tv("googlenet", aux_logits=False, init_weights=False),
    "tv/vit_b_16": _tv("vit_b_16", VIT),
    "tv/swin_t": _tv("swin_t"),
    **{f"timm/{n}": _timm(n) for n in ("resnet18", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_050")},
    **{f"timm/{n}": _timm(n, VIT) for n in ("vit_tiny_patch16_224", "deit_tiny_patch16_224")},
    "hf/gpt2": dict(build=_hf(lambda T: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))),
        inputs=_ids, kind="hf"),
    "hf/bert": dict(build=_hf(lambda T: T.BertForSequenceClassification(T.BertConfig(**HF_TEXT))), inputs=_ids,
                    kind="hf"),
    "hf/distilbert": dict(build=_hf(lambda T: T.DistilBertForSequenceClassification(T.DistilBertConfig(
        vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=32))),
        inputs=_ids, kind="hf"),
    "hf/vit": dict(build=_hf(lambda T: T.ViTForImageClassification(T.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=10))), inputs=_images(32), kind="hf"),
    "hf/llama (from_hf)": _llama_export("llama", num_key_value_heads=2),
    "hf/llama (hf_llama)": _llama_family("llama", num_key_value_heads=2),
    "hf/mistral (hf_llama)": _llama_family("mistral", num_key_value_heads=2, sliding_window=8),
    "hf/qwen2 (hf_llama)": _llama_family("qwen2", num_key_value_heads=2),
    "nn/TransformerEncoder": dict(build=Encoder, inputs=_seq, kind="fx"),
    "nn/TransformerEncoder (norm_first)": dict(build=lambda: Encoder(True), inputs=_seq, kind="fx"),
    "nn/LSTM": dict(build=lambda: Recurrent(nn.LSTM), inputs=_tokens, kind="fx"),
    "nn/GRU": dict(build=lambda: Recurrent(nn.GRU), inputs=_tokens, kind="fx"),
}


# -- one model, in its own process -------------------------------------------------------------------
def _float64(x):
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _exact_rmsnorm():
    """HF upcasts RMSNorm to float32 even in a float64 model: keep the model's dtype (the same formula)."""
    from transformers.models.llama import modeling_llama
    from transformers.models.mistral import modeling_mistral
    from transformers.models.qwen2 import modeling_qwen2

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    for mod, name in ((modeling_llama, "LlamaRMSNorm"), (modeling_mistral, "MistralRMSNorm"),
                      (modeling_qwen2, "Qwen2RMSNorm")):
        getattr(mod, name).forward = forward


def _generic(model: nn.Module, seed: int) -> nn.Module:
    """Noise on every parameter (20% of its spread, at least 0.02): zero-initialised heads (torchvision
    ViT), constant layer scales (1e-6) and unit norm gains would otherwise hide changes of the output."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel():
                spread = float(p.std()) if p.numel() > 1 else 0.0
                p.add_(0.2 * max(spread, 0.1) * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _instance(case, seed):
    torch.manual_seed(seed)
    if case["kind"] == "arch":
        m = case["arch"]().module(seed=seed, dtype=torch.float64)
        m.set_attn_implementation("sdpa")
    else:
        m = case["build"]().double()
    return _generic(m, seed).eval()


def _outputs(model, x):
    with torch.no_grad():
        y = model(*x)
    leaves = torch.utils._pytree.tree_leaves(dict(y) if hasattr(y, "keys") else y)
    return torch.cat([t.flatten() for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()])


def _extract(case, model, x, unknown="error"):
    import architectures
    if case["kind"] == "arch":
        return case["arch"]().graph
    if case["kind"] == "hf":
        return architectures.from_hf(model, x, unknown=unknown)
    return architectures.from_module(model, x, unknown=unknown)


def _counts(g) -> dict:
    from symmetries.classes import Trivial
    return dict(spaces=len(g.spaces()),
                nontrivial=sum(any(not isinstance(c, Trivial) for c in s.classes) for s in g.spaces()))


def run_case(name: str, opts: dict, results) -> None:
    """Fill ``results`` (a queue) with ``(phase, value)`` as each phase ends."""
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    import solvers
    import symmetries as sy
    from architectures import ExtractionError
    from symmetries.testing import check_invariance
    case = MODELS[name]
    if case.get("exact_norm"):
        _exact_rmsnorm()
    try:
        model = _instance(case, 0)
        x = tuple(_float64(t) for t in (case["inputs"](),))
        t = time.perf_counter()
        try:
            g = _extract(case, model, x)
            results.put(("extract", dict(ok=True, seconds=time.perf_counter() - t, **_counts(g))))
        except ExtractionError as err:
            results.put(("extract", dict(ok=False, node=err.node, reason=str(err), seconds=time.perf_counter() - t)))
            try:  # what a user gets with unknown="fixed": the rest is measured on that graph
                g = _extract(case, model, x, unknown="fixed")
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                results.put(("fixed", dict(error=f"{type(exc).__name__}: {str(exc)[:200]}")))
                return
            results.put(("fixed", _counts(g)))
            if not _counts(g)["nontrivial"]:
                return
        if not opts["invariance"]:
            results.put(("invariance", dict(skipped=True)))
        else:
            t = time.perf_counter()
            rep = check_invariance(model, g, x, examples=1)
            worst = max(rep.checks, key=lambda c: c.max_error - c.tolerance) if rep.checks else None
            results.put(("invariance", dict(passed=rep.passed, error=max((c.max_error for c in rep.checks),
                                                                         default=0.0),
                                            checks=len(rep.checks), seconds=time.perf_counter() - t,
                                            worst=worst.message() if worst is not None and not rep.passed else "")))
        if not opts["align"]:
            return
        pa = dict(model.state_dict())
        model_b = _instance(case, 1)
        pb = dict(model_b.state_dict())
        y = _outputs(model_b, x)
        timer = SpaceTimer()
        dtype = getattr(torch, opts["align_dtype"])
        with timer.installed():
            t = time.perf_counter()
            classes = ({s.name: sy.PermutationScaling() for s in g.spaces() if g.admits(s.name, sy.PermutationScaling())}
                       if opts["scaling"] else None)
            sol = solvers.solve("weight_matching", g, pa, pb, seed=0, dtype=dtype, classes=classes)
            seconds = time.perf_counter() - t
        model_b.load_state_dict(sy.apply(g, pb, sol.transforms))
        kept = float((_outputs(model_b, x) - y).abs().max())
        profile = timer.report(g, pa, opts["top"]) if name in opts["profile"] else []
        if profile:
            profile.append("  J: " + " → ".join(f"{v:.6g}" for v in sol.history) + f"  ({sol.message})")
        results.put(("align", dict(seconds=seconds, sweeps=sol.iterations, status=sol.status, kept=kept,
                                   scale=float(y.abs().max()), before=sol.objective_before,
                                   after=sol.objective_after, profile=profile)))
    except Exception as exc:  # noqa: BLE001 - the row says what failed
        results.put(("error", f"{type(exc).__name__}: {str(exc)[:300]}\n{traceback.format_exc()[-1500:]}"))


def run_isolated(name: str, opts: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=run_case, args=(name, opts, q), daemon=True)
    start = time.perf_counter()
    p.start()
    out: dict = {}
    deadline = start + opts["timeout"]
    while True:
        try:
            phase, value = q.get(timeout=0.5)
            out[phase] = value
            continue
        except queue_mod.Empty:
            pass
        if not p.is_alive():
            while True:  # drain what it put before exiting
                try:
                    phase, value = q.get(timeout=0.2)
                    out[phase] = value
                except queue_mod.Empty:
                    break
            if p.exitcode and "error" not in out:
                out["error"] = f"process died (exit code {p.exitcode})"
            break
        if time.perf_counter() > deadline:
            p.kill()
            p.join(5)
            out["timeout"] = opts["timeout"]
            break
    out["wall"] = time.perf_counter() - start
    return out


# -- the table ---------------------------------------------------------------------------------------
def _short(reason: str) -> str:
    """The refusal without its standard preamble and advice: the op and why."""
    reason = reason.split("\n")[0]
    reason = re.sub(r"^from_module cannot reason about fx node '[^']*' ", "", reason)
    return reason.replace(" Pass unknown='fixed' to leave that region without symmetry.", "")


def _fmt(name: str, r: dict, opts: dict) -> tuple[str, list[str]]:
    ext, inv, al = r.get("extract"), r.get("invariance"), r.get("align")
    pending = "timeout" if "timeout" in r else ("error" if "error" in r else "—")
    fx = r.get("fixed", {})
    if ext is None:
        cells = [pending, "—"]
    elif ext["ok"]:
        cells = [f"ok ({ext['seconds']:.1f} s)", f"{ext['spaces']} / {ext['nontrivial']}"]
    else:
        reason = _short(ext["reason"])
        cells = [f"**refused** at `{ext['node']}`: {reason[:120]}{'…' if len(reason) > 120 else ''}",
                 f"fixed: {fx['spaces']} / {fx['nontrivial']}" if "spaces" in fx else "—"]
    measured = ext is not None and (ext["ok"] or fx.get("nontrivial"))
    if not measured:
        cells += ["—", "—", "—"]
    else:
        if inv is None:
            cells.append(pending)
        elif inv.get("skipped"):
            cells.append("skipped")
        else:
            cells.append(f"{inv['error']:.1e}" + ("" if inv["passed"] else " **FAIL**"))
        if al is None:
            cells += [pending if opts["align"] else "skipped", "—"]
        else:
            cells += [f"{al['seconds']:.1f} s ({al['sweeps']} sw)",
                      f"{al['kept']:.1e} (rel {al['kept'] / max(al['scale'], 1e-300):.0e})"]
    notes = []
    if "error" in r:
        notes.append(r["error"].split("\n")[0][:160])
    if inv and not inv.get("skipped") and not inv["passed"]:
        notes.append(inv["worst"][:200])
    if MODELS[name].get("note"):
        notes.append(MODELS[name]["note"])
    row = f"| {name} | " + " | ".join(cells) + f" | {'; '.join(notes)} |"
    return row, (al or {}).get("profile", [])


HEADER = ("| model | extract | spaces / non-trivial | invariance (float64, max) | weight matching (1 thread) "
          "| function kept (max abs, rel. to max output) | notes |\n|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", nargs="*", default=None, help="run models whose name contains any of these")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    ap.add_argument("--no-invariance", dest="invariance", action="store_false")
    ap.add_argument("--no-align", dest="align", action="store_false")
    ap.add_argument("--align-dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--scaling", action="store_true",
                    help="search PermutationScaling (D P) at every space that admits it")
    ap.add_argument("--profile", nargs="*", default=(), help="models whose per-space times to print")
    ap.add_argument("--top", type=int, default=12, help="spaces listed per profile (default 12)")
    ap.add_argument("--out", default=None, help="also write the table (Markdown) to this file")
    args = ap.parse_args(argv)
    names = [n for n in MODELS if args.k is None or any(k in n for k in args.k)]
    opts = dict(timeout=args.timeout, invariance=args.invariance, align=args.align, align_dtype=args.align_dtype,
                profile=set(args.profile), top=args.top, scaling=args.scaling)
    print(f"torch {torch.__version__}; images {IMG}×{IMG}, batch 2 (ViTs {VIT}, batch 1); weight matching in "
          f"{args.align_dtype}{' with PermutationScaling where admitted' if args.scaling else ''}, invariance and "
          f"function kept in float64; timeout {args.timeout:.0f} s per model")
    print(HEADER, flush=True)
    rows, profiles, results = [], [], []
    for name in names:
        r = run_isolated(name, opts)
        results.append((name, r))
        row, prof = _fmt(name, r, opts)
        rows.append(row)
        print(row, flush=True)
        if prof:
            profiles.append((name, prof))
            print("\n".join(prof), file=sys.stderr, flush=True)
        if "error" in r and "\n" in r["error"]:
            print("    " + r["error"].replace("\n", "\n    ")[-1200:], file=sys.stderr)
    refusals = [f"- {n}: node `{r['extract']['node']}` — {r['extract']['reason'][:600]}" for n, r in results
                if r.get("extract") and not r["extract"]["ok"]]
    if refusals:
        print("\nRefusals (node and reason):\n" + "\n".join(refusals))
    for name, prof in profiles:  # (also printed as they came, under their rows)
        print(f"\n{name}\n" + "\n".join(prof))
    if args.out:
        with open(args.out, "w") as f:
            f.write(HEADER + "\n" + "\n".join(rows) + "\n")
            if refusals:
                f.write("\nRefusals (node and reason):\n\n" + "\n".join(refusals) + "\n")
            for name, prof in profiles:
                f.write(f"\n{name}\n```\n" + "\n".join(prof) + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
