"""Exact counting and uniform sampling of linked scalar decisions without listing the
joint assignments: dynamic programming over the variables in order, where the state is
what is left of each rule once the variables assigned so far are substituted.

A chain of rules between neighbouring stages (`s2.width == s1.width or s2.width == 2 *
s1.width`, ...) leaves, after stage k is assigned, only rules that mention stage k and
later ones, folded to constants where they read earlier stages; a sum over all stages
(`s1.depth + ... + s6.depth <= 14`) leaves one partial sum. So the number of distinct
states per level stays small, and the work is (levels x states x variable states) instead
of the product of all variable states.

The folding follows `expr.evaluate` exactly (left-to-right, `and`/`or` short-circuit on
their left operand only), so a rule holds in the DP exactly when `_holds` says it does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space import expr as ex
from autobuild_dsl.space.expr import Binary, Call, Const, Expr, ExprError, Ref, Unary, Value

# Folded expressions are nested tuples: ("c", type name, value) for a constant (the type
# keeps 1, 1.0 and True apart), ("r", name), ("u", op, x) (op "-", "not", or "bool" for
# an `and`/`or` whose left operand is decided), ("b", op, l, r), ("f", func, args).
Folded = tuple
_FALSE: Folded = ("c", "bool", False)
_ERROR: Folded = ("e",)  # evaluating raised: the rule does not hold (as `_holds` says)


class TooManyStates(AbcError, ValueError):
    """The rules keep too many distinct partial states for the DP."""

    code = "too-many-states"


def _const(value: Value) -> Folded:
    return ("c", type(value).__name__, value)


def to_folded(expr: Expr) -> Folded:
    if isinstance(expr, Const):
        return _const(expr.value)
    if isinstance(expr, Ref):
        return ("r", expr.name)
    if isinstance(expr, ex.LayerRef):
        return _ERROR  # rules never read per-layer choices
    if isinstance(expr, Unary):
        return ("u", expr.op, to_folded(expr.operand))
    if isinstance(expr, Binary):
        return ("b", expr.op, to_folded(expr.left), to_folded(expr.right))
    if isinstance(expr, Call):
        return ("f", expr.func, tuple(to_folded(a) for a in expr.args))
    return _ERROR


def fold(node: Folded, env: dict[str, Value]) -> Folded:
    """Substitute the names `env` knows and compute every part that became constant."""
    kind = node[0]
    if kind in ("c", "e"):
        return node
    if kind == "r":
        return _const(env[node[1]]) if node[1] in env else node
    try:
        if kind == "u":
            x = fold(node[2], env)
            if x[0] == "e":
                return _ERROR
            if x[0] != "c":
                return ("u", node[1], x)
            if node[1] == "not":
                return _const(not x[2])
            if node[1] == "bool":  # what `and`/`or` return once their left is decided
                return _const(bool(x[2]))
            return _const(-ex._number(x[2], "-"))
        if kind == "b":
            op = node[1]
            left = fold(node[2], env)
            if left[0] == "e":
                return _ERROR
            if op in ("and", "or"):
                if left[0] == "c":
                    truth = bool(left[2])
                    if (op == "and" and not truth) or (op == "or" and truth):
                        return _const(truth)
                    right = fold(node[3], env)
                    if right[0] == "e":
                        return _ERROR
                    return _const(bool(right[2])) if right[0] == "c" else ("u", "bool", right)
                return ("b", op, left, fold(node[3], env))
            right = fold(node[3], env)
            if right[0] == "e":
                return _ERROR
            if left[0] == "c" and right[0] == "c":
                return _const(ex._binary(op, left[2], right[2]))
            return ("b", op, left, right)
        if kind == "f":
            args = tuple(fold(a, env) for a in node[2])
            if any(a[0] == "e" for a in args):
                return _ERROR
            if all(a[0] == "c" for a in args):
                return _const(ex._call(node[1], [ex._number(a[2], node[1]) for a in args]))
            return ("f", node[1], args)
    except ExprError:
        return _ERROR
    return _ERROR


class RuleDP:
    """Counts and samples the joint states of `variables` (each a list of states, a state
    being (name, value) pairs, with integer weights) that satisfy every rule."""

    def __init__(
        self,
        states: Sequence[Sequence[tuple[tuple[str, Value], ...]]],
        weights: Sequence[Sequence[int]],
        rules: Sequence[Expr],
        max_states: int = 200_000,
    ) -> None:
        self.states = states
        self.weights = weights
        start = self._advance(tuple(to_folded(r) for r in rules), {})
        if start is None:
            self.levels: list[dict] = []
            self.total = 0
            return
        # Forward: the states reachable at each level and their transitions.
        levels: list[dict[tuple, list[tuple[int, tuple]]]] = []
        frontier = {start}
        seen = 0
        for variable in states:
            level: dict[tuple, list[tuple[int, tuple]]] = {}
            following: set[tuple] = set()
            for state in frontier:
                moves = []
                for index, assignment in enumerate(variable):
                    nxt = self._advance(state, dict(assignment))
                    if nxt is not None:
                        moves.append((index, nxt))
                        following.add(nxt)
                level[state] = moves
                if seen + len(level) + len(following) > max_states:
                    raise TooManyStates(f"more than {max_states:,} partial rule states")
            seen += len(level)
            levels.append(level)
            frontier = following
        # Backward: how many weighted completions each state has.
        counts: list[dict[tuple, int]] = [dict() for _ in range(len(levels) + 1)]
        counts[-1] = {state: 1 for state in frontier if not state}
        for depth in range(len(levels) - 1, -1, -1):
            after = counts[depth + 1]
            weights_here = weights[depth]
            mine = counts[depth]
            for state, moves in levels[depth].items():
                total = 0
                for index, nxt in moves:
                    total += weights_here[index] * after.get(nxt, 0)
                mine[state] = total
        self.levels = levels
        self.counts = counts
        self.start = start
        self.total = counts[0].get(start, 0)

    @staticmethod
    def _advance(state: tuple, env: dict[str, Value]) -> tuple | None:
        """Fold every open rule with `env`: None if one fails, else the rules left open."""
        left = []
        for rule in state:
            folded = fold(rule, env)
            if folded[0] == "e":
                return None
            if folded[0] == "c":
                if not folded[2]:
                    return None
                continue
            left.append(folded)
        return tuple(left)

    def sample(self, rng: random.Random) -> tuple[int, ...]:
        """One joint state (an index per variable), uniform over the weighted total."""
        state = self.start
        picked = []
        for depth, level in enumerate(self.levels):
            after = self.counts[depth + 1]
            pick = rng.randrange(self.counts[depth][state])
            for index, nxt in level[state]:
                pick -= self.weights[depth][index] * after.get(nxt, 0)
                if pick < 0:
                    picked.append(index)
                    state = nxt
                    break
        return tuple(picked)

    def joints(self) -> Iterator[tuple[int, ...]]:
        """Every satisfying joint state, in the order of the variables' states."""
        if not self.total:
            return

        def walk(depth: int, state: tuple, prefix: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
            if depth == len(self.levels):
                yield prefix
                return
            after = self.counts[depth + 1]
            for index, nxt in self.levels[depth][state]:
                if after.get(nxt, 0) and self.weights[depth][index]:
                    yield from walk(depth + 1, nxt, (*prefix, index))

        yield from walk(0, self.start, ())
