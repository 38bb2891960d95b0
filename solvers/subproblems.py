"""One space's weight-matching subproblem, solved by its class: ``argmin_T Σ_e ‖A_e − T·B_e‖²``.

* ``Permutation`` / ``SignFlip`` / ``SignedPermutation`` / ``Orthogonal`` — the loss is
  ``const − 2⟨T, M⟩`` with ``M = Σ_e A_e B_eᵀ`` (``+ ⟨T∘T, V⟩`` for variance edges): the class
  oracle ``argmax ⟨T, M⟩`` (LAP; signed LAP on ``|M|``; polar factor ``U Vᵀ`` of ``M``) is exact.
* ``PositiveScaling`` / ``PermutationScaling`` — exact per-unit scales (:mod:`solvers.scaling`);
  for ``D P`` the optimal scale of every pair ``(j, i)`` gives a cost matrix solved by LAP (exact).
* ``Invertible`` — with only producing (or only consuming) tensors the least-squares solution
  ``T = (Σ A Bᵀ)(Σ B Bᵀ)⁻¹``; with both, the consuming terms ``‖A − T⁻ᵀB‖²`` are replaced by the
  equation error ``‖Tᵀ A − B‖²`` and the resulting Sylvester equation
  ``(Σ_in A Aᵀ) T + T (Σ_out B Bᵀ) = Σ_out A Bᵀ + Σ_in A Bᵀ`` is solved exactly (a convex
  surrogate), then the true loss is minimised from the better of that and the current map by
  L-BFGS (a local method; the caller keeps the update only if the true loss decreases).
* ``HeadStructured(H, inner)`` — the best inner map for every (A head, B head) pair, heads
  assigned by LAP on the pair losses summed over the spaces of a head group.
* ``SemiPermutation`` — :func:`solvers.splits.split_update`.

Each is registered with the generic function :func:`subproblem` by class type
(``functools.singledispatch``); a third-party class registers its own the same way.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from symmetries.assignment import assignment_permutation, assignment_permutations
from symmetries.classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                                PositiveScaling, SemiPermutation, SignedPermutation, SignFlip, SymmetryClass,
                                Trivial)
from symmetries.elements import DenseElement, Element, GatherElement, HeadElement
from symmetries.errors import SymmetryError
from symmetries.roles import Role

from solvers.errors import UnsupportedClassError
from solvers.local import Local, inner_product
from solvers.scale_assignment import scale_assignment
from solvers.scaling import best_scale, scale_loss
from solvers.splits import split_update

__all__ = ["solve_local", "subproblem", "has_subproblem", "subproblem_classes", "solve_heads", "solve_block",
           "linear_classes", "streamed_classes", "scale_grid_class", "gain", "score_matrices", "sylvester_psd",
           "head_blocks", "rescale", "scaling_loss"]

OUT, IN, VAR = Role.OUT, Role.IN, Role.VAR

def linear_classes(cls: SymmetryClass) -> bool:
    """Classes whose elements keep norms (the local loss is ``const − 2⟨T, M⟩``)."""
    c = cls.inner if isinstance(cls, HeadStructured) else cls
    return isinstance(c, (Trivial, Permutation, SignFlip, SignedPermutation, Orthogonal))


def streamed_classes(cls: SymmetryClass) -> bool:
    """Classes whose built-in subproblem reads only ``Σ_e A_e B_eᵀ`` per role (and B's row norms): the
    norm-keeping ones, and ``D P`` (its ``n × n`` scale terms, :func:`_scale_terms`) — their visits may
    stream the tensors (:meth:`~solvers.matcher.Matcher.local` ``stream=True``, with ``norms`` for ``D P``)."""
    return linear_classes(cls) or scale_grid_class(cls)


def scale_grid_class(cls: SymmetryClass) -> bool:
    """``PermutationScaling`` solved by the built-in subproblem: its visits need B's row norms streamed too."""
    return isinstance(cls, PermutationScaling) and subproblem.dispatch(type(cls)) is _scalings


def score_matrices(local: Local) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(M, V)``: ``M = Σ_e A_e B_eᵀ`` over out/in edges, ``V`` the same over variance edges (or ``None``)."""
    m = local.cross(OUT, IN)
    v = local.cross(VAR) if local.has(VAR) else None
    return m, v


def gain(cls, local: Local, old: Element, new: Element) -> float:
    """``L(old) − L(new)``: by ``2(⟨new − old, M⟩ + ⟨new∘new − old∘old, V⟩)`` for norm-keeping classes, by
    the scale terms of the matched pairs for positive monomials (:func:`scaling_loss`), else by the losses."""
    if linear_classes(cls) and tuple(old.shape) == tuple(new.shape):
        m, v = score_matrices(local)
        g = 2 * (inner_product(new, m) - inner_product(old, m))
        if v is not None:
            g += 2 * (inner_product(new, v, squared=True) - inner_product(old, v, squared=True))
        return g
    if isinstance(cls, (PositiveScaling, PermutationScaling)) and local.keeps_norms:
        before, after = scaling_loss(local, old), scaling_loss(local, new)
        if before is not None and after is not None:
            return before - after
    return local.loss(old) - local.loss(new)


def solve_local(cls: SymmetryClass, local: Local, *, backend: str = "auto", current: Element | None = None) -> Element:
    """The element of ``cls`` minimising the local loss: the identity where no tensor meets the
    space, else the subproblem solver registered for ``cls``'s type (:func:`subproblem`)."""
    if local.empty:
        return cls.identity(local.n) if local.m == local.n else GatherElement.identity(local.n)
    return subproblem(cls, local, backend=backend, current=current)


@functools.singledispatch
def subproblem(cls: SymmetryClass, local: Local, *, backend: str = "auto", current: Element | None = None) -> Element:
    """``argmin_{T ∈ cls} Σ_e ‖A_e − T·B_e‖²`` for a non-empty ``local`` — a generic function
    dispatched on the class's type. A new :class:`~symmetries.SymmetryClass` brings its own::

        @solvers.subproblem.register(MyClass)
        def _(cls, local, *, backend="auto", current=None):
            return ...  # an element of cls, shape (local.m, local.n)

    ``current`` is the space's current element (a warm start, or ``None``); ``backend`` the LAP
    backend. Weight matching (and the solvers built on it) then search ``MyClass`` — no edit of
    ``solvers`` needed. The base case raises :class:`~solvers.errors.UnsupportedClassError`."""
    raise UnsupportedClassError(f"weight matching has no subproblem solver for {cls!r}; register one with "
                                f"@solvers.subproblem.register({type(cls).__name__})", cls=cls)


def has_subproblem(cls: SymmetryClass) -> bool:
    """Whether :func:`subproblem` has a solver for ``cls`` (head-structured: for its inner class,
    which may not be a semi-permutation)."""
    if isinstance(cls, HeadStructured):
        return not isinstance(cls.inner, (SemiPermutation, HeadStructured)) and has_subproblem(cls.inner)
    return subproblem.dispatch(type(cls)) is not subproblem.dispatch(object)


def subproblem_classes() -> tuple[type, ...]:
    """The class types with a registered subproblem solver (registration order)."""
    return tuple(t for t in subproblem.registry if t is not object)


@subproblem.register(Trivial)
def _trivial(cls, local, *, backend="auto", current=None):
    return cls.identity(local.n) if local.m == local.n else GatherElement.identity(local.n)


@subproblem.register(HeadStructured)
def _head_structured(cls, local, *, backend="auto", current=None):
    return solve_heads([cls], [local], backend=backend)[0]


@subproblem.register(SemiPermutation)
def _semi_permutation(cls, local, *, backend="auto", current=None):
    return split_update(local, backend=backend)


@subproblem.register(Permutation)
@subproblem.register(SignFlip)
@subproblem.register(SignedPermutation)
@subproblem.register(Orthogonal)
def _norm_keeping(cls, local, *, backend="auto", current=None):
    m, v = score_matrices(local)
    if v is not None and isinstance(cls, Permutation):  # T∘T = T
        m, v = m + v, None
    return solve_block(cls, m, v, backend)


@subproblem.register(PositiveScaling)
@subproblem.register(PermutationScaling)
def _scalings(cls, local, *, backend="auto", current=None):
    return _scaling(cls, local, backend, current)


@subproblem.register(Invertible)
def _invertible_map(cls, local, *, backend="auto", current=None):
    return dense_or(_invertible(local, current), current)


def dense_or(x: torch.Tensor, fallback: Element | None) -> Element:
    """``DenseElement(x)``, or — when ``x`` is singular (no element of an invertible class) — ``fallback``
    (the identity if ``None`` and square; else the singular map is refused as it is)."""
    try:
        return DenseElement(x)
    except SymmetryError:  # InvalidElementError: a singular matrix
        if fallback is not None:
            return fallback
        if x.shape[0] == x.shape[1]:
            return GatherElement.identity(x.shape[1])
        raise


# -- scalings ------------------------------------------------------------------------------
def _scale_terms(local: Local, diagonal: bool, index: torch.Tensor | None = None):
    """``α, β, γ, δ, ζ, ε`` of :mod:`solvers.scaling` (float64 numpy): for every pair ``(j, i)``
    (``m × n`` crosses, ``1 × n`` norms), or with ``diagonal`` for the pairs ``(j, index[j])``."""
    def cross(role):  # a role no edge plays: the scalar 0 (no m × n zeros to build and scan)
        if not local.has(role):
            return 0.0
        c = local.cross_pairs(role, index) if diagonal else local.cross(role)
        return c.double().cpu().numpy()

    def norms(role):
        if not local.has(role):
            return 0.0
        v = local.row_norms(role, "b").double().cpu()
        return (v if index is None else v[index.cpu()]).numpy() if diagonal else v.numpy()[None, :]
    return dict(alpha=cross(OUT), beta=norms(OUT), gamma=cross(IN), delta=norms(IN),
                zeta=cross(VAR), eps=norms(VAR))


def _scaling(cls, local: Local, backend: str, current: Element | None = None) -> GatherElement:
    if isinstance(cls, PositiveScaling):
        c, _ = best_scale(**_scale_terms(local, diagonal=True))
        return GatherElement.monomial(np.arange(local.n), c)
    terms = _scale_terms(local, diagonal=False)
    local._cache["scale_grid"] = terms  # scaling_loss reads the pairs' terms from here (no second pass)
    start = (current.index.cpu().numpy() if isinstance(current, GatherElement) and current.bijective
             and tuple(current.shape) == (local.n, local.n) else None)
    perm, c, f = scale_assignment(**terms, start=start, backend=backend)
    el = GatherElement.monomial(perm, c)
    local._cache["scale_solution"] = (el, float(f.sum()))  # its loss: the LAP's own cost
    return el


def _pairs(terms: dict, rows: np.ndarray, cols: np.ndarray) -> dict:
    """The scale terms of the pairs ``(rows[k], cols[k])`` from those of the grid (crosses ``m × n``, norms ``1 × n``,
    scalars)."""
    return {k: (v[rows, cols] if v.shape[0] == len(rows) else v[0, cols]) if isinstance(v, np.ndarray) else v
            for k, v in terms.items()}


def _monomial_scale(el: Element, n: int) -> np.ndarray | None:
    """``c`` of a positive monomial ``D P`` (``in`` scale ``1/c``; ones when unscaled), else ``None``."""
    if not isinstance(el, GatherElement) or tuple(el.shape) != (n, n) or not el.bijective:
        return None
    out, inv = (np.ones(n) if v is None else v.detach().cpu().to(torch.float64).numpy()
                for v in (el.out_scale, el.in_scale))
    if not (out > 0).all() or not (np.abs(inv * out - 1.0) <= 1e-12).all():  # in = 1/out to round-off
        return None
    return out


def scaling_loss(local: Local, el: Element) -> float | None:
    """``L(T) − Σ_e ‖A_e‖²`` for a positive monomial ``T = D P`` as ``Σ_j f_j(c_j)`` from the scale terms
    of the pairs ``(j, P(j))`` (``O(n)`` from the ``m × n`` terms of the last ``D P`` solve or the cached crosses,
    else ``O(n k)``); ``None`` otherwise."""
    solved = local._cache.get("scale_solution")
    if solved is not None and solved[0] is el:  # the element this Local's D P solve returned
        return solved[1]
    c = _monomial_scale(el, local.n)
    if c is None or local.m != local.n:
        return None
    grid = local._cache.get("scale_grid")
    if grid is not None:
        terms = _pairs(grid, np.arange(local.m), el.index.cpu().numpy())
    else:
        terms = _scale_terms(local, diagonal=True, index=el.index)
    return float(scale_loss(c, **terms).sum())


def rescale(local: Local, current: GatherElement) -> tuple[GatherElement, float]:
    """The best positive scales for ``current``'s gather kept fixed (``D P`` with ``P`` given) and the
    decrease of the local loss: the exact minimiser over ``D``, ``n`` scalar problems."""
    c_old = _monomial_scale(current, local.n)
    terms = _scale_terms(local, diagonal=True, index=current.index)
    c, f = best_scale(**terms)
    new = GatherElement.monomial(current.index, c)
    if c_old is None:  # not a positive monomial: compare the losses themselves
        return new, local.loss(current) - local.loss(new)
    return new, float(scale_loss(c_old, **terms).sum() - f.sum())


# -- invertible ----------------------------------------------------------------------------
def sylvester_psd(d: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Solve ``D X + X C = E`` for symmetric PSD ``D`` (``…×m×m``) and ``C`` (``…×n×n``) by
    eigendecomposition: ``X = V [(Vᵀ E U) / (μ_a + λ_b)] Uᵀ`` (batched; null directions → 0)."""
    mu, v = torch.linalg.eigh(d)
    lam, u = torch.linalg.eigh(c)
    denom = mu.unsqueeze(-1) + lam.unsqueeze(-2)
    floor = 1e-12 * denom.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    core = v.transpose(-2, -1) @ e @ u
    core = torch.where(denom > floor, core / denom.clamp_min(1e-300), torch.zeros_like(core))
    return v @ core @ u.transpose(-2, -1)


def _invertible(local: Local, current: Element | None) -> torch.Tensor:
    """Sylvester start (or the current map, whichever is better), then L-BFGS on the true loss."""
    cout, cin = local.cross(OUT).double(), local.cross(IN).double()
    c, gin = local.gram_b(OUT).double().to(cout), local.gram_b(IN).double().to(cout)
    x = sylvester_psd(local.gram_a(IN).double().to(cout), c, cout + cin)
    starts = [x] + ([current.as_matrix().to(x)] if current is not None and tuple(current.shape) == tuple(x.shape)
                    else [])
    values = [_loss_or_inf(s, cout, c, cin, gin) for s in starts]
    return polish_invertible(starts[int(np.nanargmin(values))], cout, c, cin, gin)


def _loss_or_inf(x, cout, c, cin, gin) -> float:
    """:func:`invertible_loss`, or ``inf`` for a singular ``x`` (a singular Sylvester start: the caller
    then keeps its current map — ``dense_or`` refuses the singular one)."""
    try:
        return float(invertible_loss(x, cout, c, cin, gin))
    except RuntimeError:  # torch.linalg.LinAlgError: singular
        return math.inf


def invertible_loss(x, cout, c, cin, gin) -> torch.Tensor:
    """``Σ_out ‖A − X B‖² + Σ_in ‖A − X⁺ᵀ B‖²`` up to ``‖A‖²``, in Gram form (batched, summed)."""
    y = torch.linalg.pinv(x).transpose(-2, -1) if x.shape[-2] != x.shape[-1] else \
        torch.linalg.inv(x).transpose(-2, -1)
    xtx, yty = x.transpose(-2, -1) @ x, y.transpose(-2, -1) @ y
    return ((-2 * x * cout).sum() + (xtx * c).sum() - 2 * (y * cin).sum() + (yty * gin).sum())


def polish_invertible(x0, cout, c, cin, gin, iters: int = 50) -> torch.Tensor:
    """Minimise :func:`invertible_loss` from ``x0`` with L-BFGS (strong Wolfe); falls back to ``x0``."""
    if float(cin.abs().sum()) == 0 or float(gin.abs().sum()) == 0:
        return x0  # no consuming tensors: the least-squares solution is exact
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-14,
                            tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = invertible_loss(x, cout, c, cin, gin)
        loss.backward()
        return loss
    try:
        opt.step(closure)
    except RuntimeError:  # singular iterate
        return x0
    x = x.detach()
    with torch.no_grad():
        before, after = invertible_loss(x0, cout, c, cin, gin), invertible_loss(x, cout, c, cin, gin)
    return x if bool(torch.isfinite(after)) and float(after) <= float(before) else x0


# -- heads ---------------------------------------------------------------------------------
def head_blocks(x: torch.Tensor, h: int) -> torch.Tensor:
    """``x`` (``m × n``, head-major rows and columns) as ``[A head, B head, m/h, n/h]`` blocks."""
    m, n = x.shape
    return x.reshape(h, m // h, h, n // h).permute(0, 2, 1, 3)  # [A head, B head, dm, dn]


def _diag_blocks(x: torch.Tensor, h: int) -> torch.Tensor:
    m = x.shape[0] // h
    return torch.stack([x[i * m:(i + 1) * m, i * m:(i + 1) * m] for i in range(h)])


def _heads_linear(inner, local: Local, h: int, backend: str):
    """Norm-keeping inner classes: the inner oracle on every block of ``M = Σ A Bᵀ``; pair loss
    ``−2⟨E_ij, M_ij⟩`` (+ variance edges) up to a constant."""
    m, v = score_matrices(local)
    if v is not None and isinstance(inner, Permutation):
        m, v = m + v, None
    mb = head_blocks(m, h)
    vb = None if v is None else head_blocks(v, h)
    if type(inner) is Permutation and vb is None and m.device.type == "cpu" and mb.shape[-1] == mb.shape[-2]:
        return _heads_permutation(mb.detach().numpy(), backend)
    best = [[solve_block(inner, mb[i, j], None if vb is None else vb[i, j], backend) for j in range(h)]
            for i in range(h)]
    loss = torch.tensor([[-2 * (inner_product(best[i][j], mb[i, j])
                                + (0.0 if vb is None else inner_product(best[i][j], vb[i, j], squared=True)))
                          for j in range(h)] for i in range(h)], dtype=torch.float64)
    return loss, _pick(best)


def _heads_permutation(blocks: np.ndarray, backend: str):
    """Permutation heads on the CPU: the h² block assignments in one batch (what ``Permutation.project``
    solves block by block: the same optima), pair loss ``−2 Σ_r M_ij[r, π_ij(r)]`` summed in float64."""
    h, _, d, _ = blocks.shape
    perms = assignment_permutations(blocks.reshape(h * h, d, d), backend=backend).reshape(h, h, d)
    loss = -2 * np.take_along_axis(blocks, perms[..., None], axis=-1)[..., 0].sum(-1, dtype=np.float64)
    return torch.from_numpy(loss), lambda perm: [GatherElement(perms[i, int(j)].copy(), d) for i, j in enumerate(perm)]


def solve_block(inner, m: torch.Tensor, v: torch.Tensor | None, backend: str) -> Element:
    """The norm-keeping class's best element for the score ``⟨T, M⟩ + ⟨T∘T, V⟩``."""
    if isinstance(inner, SignedPermutation):
        n = m.shape[0]
        perm = assignment_permutation(m.abs() + (v if v is not None else 0), backend=backend)
        vals = m[torch.arange(n), torch.as_tensor(perm, device=m.device)]
        return GatherElement.monomial(perm, torch.where(vals < 0, -1.0, 1.0).to(torch.float64).cpu())
    if isinstance(inner, Orthogonal) and m.dtype == torch.float32:  # CPU float32 SVD: ~3× the time of float64
        m = m.double()
    return inner.project(m, backend=backend)


def _heads_orthogonal(local: Local, h: int):
    """Pair losses (up to a constant) ``−2 ‖M_ij‖_*`` and the polar factors of every block."""
    blocks = head_blocks(local.cross(OUT, IN).double(), h)
    u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
    q = u @ vh
    loss = -2 * s.sum(-1)
    return loss, _pick([[DenseElement(q[i, j], q[i, j].T.contiguous()) for j in range(h)] for i in range(h)])


def _heads_invertible(local: Local, h: int):
    """Per pair the Sylvester (least-squares) map ``X_ij`` and its true loss; returns a ``finish``
    that polishes the chosen pairs by L-BFGS on the true loss."""
    cout = head_blocks(local.cross(OUT).double(), h)
    cin = head_blocks(local.cross(IN).double(), h)
    d = _diag_blocks(local.gram_a(IN).double().to(cout), h).unsqueeze(1)   # [i, 1, dm, dm]
    c = _diag_blocks(local.gram_b(OUT).double().to(cout), h).unsqueeze(0)  # [1, j, dn, dn]
    gin = _diag_blocks(local.gram_b(IN).double().to(cout), h).unsqueeze(0)
    x = sylvester_psd(d, c, cout + cin)
    ok = torch.isfinite(x).all(dim=(-2, -1))
    sv = torch.linalg.svdvals(x)
    ok &= sv[..., -1] > 1e-10 * sv[..., 0].clamp_min(1e-300)
    xs = torch.where(ok[..., None, None], x, torch.eye(x.shape[-2], x.shape[-1], dtype=x.dtype).expand_as(x))
    y = torch.linalg.pinv(xs).transpose(-2, -1)  # the consuming side reads Qᵀ = (X⁺)ᵀ
    loss = (-2 * (xs * cout).sum((-2, -1)) + ((xs.transpose(-2, -1) @ xs) * c).sum((-2, -1))
            - 2 * (y * cin).sum((-2, -1)) + ((y.transpose(-2, -1) @ y) * gin).sum((-2, -1)))
    loss = torch.where(ok, loss, torch.full_like(loss, float("inf")))

    def finish(perm: np.ndarray) -> list[Element]:
        rows, cols = torch.arange(h), torch.as_tensor(perm)
        polished = polish_invertible(xs[rows, cols], cout[rows, cols], c[0, cols], cin[rows, cols], gin[0, cols])
        return [dense_or(polished[i], None) for i in range(h)]
    return loss, finish


def _heads_generic(inner, local: Local, h: int, backend: str):
    best = [[solve_local(inner, local.head(h, i, j), backend=backend) for j in range(h)] for i in range(h)]
    loss = torch.tensor([[local.head(h, i, j).loss(best[i][j]) for j in range(h)] for i in range(h)],
                        dtype=torch.float64)
    return loss, _pick(best)


def _pick(best):
    return lambda perm: [best[i][int(j)] for i, j in enumerate(perm)]


def solve_heads(classes: list[HeadStructured], locals_: list[Local], *, backend: str = "auto") -> list[HeadElement]:
    """Spaces of one head group solved jointly: one head permutation ``π`` minimising the summed
    pair losses, then each space's best inner map for its pairs ``(i, π(i))``."""
    h = classes[0].num_heads
    total, finishers = None, []
    for cls, local in zip(classes, locals_):
        if cls.num_heads != h:
            raise ValueError(f"spaces of one head group need one head count, got {cls!r} and {classes[0]!r}")
        if local.empty:
            inner_id = cls.inner.identity(local.n // h)
            loss, finish = torch.zeros(h, h, dtype=torch.float64), _pick([[inner_id] * h for _ in range(h)])
        elif isinstance(cls.inner, Orthogonal):
            loss, finish = _heads_orthogonal(local, h)
        elif isinstance(cls.inner, Invertible):
            loss, finish = _heads_invertible(local, h)
        elif linear_classes(cls.inner):
            loss, finish = _heads_linear(cls.inner, local, h, backend)
        else:
            loss, finish = _heads_generic(cls.inner, local, h, backend)
        total = loss.cpu() if total is None else total + loss.cpu()
        finishers.append(finish)
    finite = torch.isfinite(total)
    big = float(total[finite].abs().max()) * 4 + 1 if bool(finite.any()) else 1.0
    total = torch.where(finite, total, torch.full_like(total, big))
    perm = assignment_permutation(total, maximize=False, backend=backend)
    return [HeadElement(perm, finish(perm)) for finish in finishers]
