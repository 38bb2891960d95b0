"""Wall time of weight matching per space, for benchmarks: ``with SpaceTimer().installed() as t: solve(...)``.

While installed it wraps ``Matcher.local`` (building a space's local problem: the cross products of
the tensors meeting it, the other spaces' transforms applied), ``solve_local``/``solve_heads`` (the
LAP, head assignment… charged to the space whose local problem was built last: a head group's joint
solve goes to its last space) and ``Problem.objective``; :meth:`SpaceTimer.report` lists the spaces by
time with their width, ``Σk`` (the columns of the tensors meeting them) and the class searched.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class SpaceTimer:
    """Wall time of weight matching per space: building its local problem, solving it; objective calls."""

    def __init__(self):
        self.local = defaultdict(float)
        self.solve = defaultdict(float)
        self.visits = defaultdict(int)
        self.objective = 0.0
        self.objective_calls = 0
        self.current = None
        self.classes = {}  # the class searched at each space

    @contextmanager
    def installed(self):
        import solvers.algorithms.weight_matching as wm
        from solvers.problem import Problem
        saved = (wm.Matcher.local, wm.solve_local, wm.solve_heads, Problem.objective)
        timer = self

        def local(matcher, space, *a, **k):
            t = time.perf_counter()
            try:
                return saved[0](matcher, space, *a, **k)
            finally:
                timer.local[space] += time.perf_counter() - t
                timer.visits[space] += 1
                timer.current = space
                timer.classes = matcher.problem.classes

        def timed(fn):
            def run(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    timer.solve[timer.current] += time.perf_counter() - t
            return run

        def objective(problem, *a, **k):
            t = time.perf_counter()
            try:
                return saved[3](problem, *a, **k)
            finally:
                timer.objective += time.perf_counter() - t
                timer.objective_calls += 1

        wm.Matcher.local, wm.solve_local, wm.solve_heads, Problem.objective = \
            local, timed(saved[1]), timed(saved[2]), objective
        try:
            yield self
        finally:
            wm.Matcher.local, wm.solve_local, wm.solve_heads, Problem.objective = saved

    def report(self, graph, params, top: int = 12) -> list[str]:
        """Lines: the ``top`` spaces by time, with width, Σ columns k of the tensors meeting it, visits."""
        rows = []
        for s in set(self.local) | set(self.solve):
            sp = graph.space(s)
            k = 0
            for e in graph.edges_at(s):
                shape = params[e.parameter].shape
                k += shape.numel() // max(shape[e.axis], 1)
            rows.append((self.local[s] + self.solve[s], s, sp.size, k, self.visits[s], self.local[s], self.solve[s],
                         self.classes.get(s)))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        out = [f"  per-space time (top {top} of {len(rows)}; spaces total {total:.2f} s, objective "
               f"{self.objective:.2f} s in {self.objective_calls} calls)",
               f"  {'space':48s} {'n':>6s} {'Σk':>9s} {'visits':>6s} {'local s':>8s} {'solve s':>8s}  class"]
        for t, s, n, k, v, lo, so, cls in rows[:top]:
            out.append(f"  {s[:48]:48s} {n:6d} {k:9d} {v:6d} {lo:8.2f} {so:8.2f}  {cls!r}")
        return out
