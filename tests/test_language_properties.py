"""Property tests: no text makes the compiler raise anything but located diagnostics."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobuild_dsl.lang import CompileError, compile_text
from autobuild_dsl.lang.formatter import format_file
from autobuild_dsl.space.decisions import space_size
from autobuild_dsl.space.expr import Binary, Call, Const, Ref, Unary, format_expr

SEEDS = {
    p.name: p.read_text()
    for p in sorted((Path(__file__).resolve().parent.parent / "spaces").glob("*.abs"))
}
# Self-contained seeds only: sd14_unet_hw extends another file by a relative path.
SELF_CONTAINED = [text for name, text in SEEDS.items() if 'from "' not in text]

TOKENS = [
    "space", "stage", "stages", "layer", "depth", "choice", "require", "skip", "unit", "restrict",
    "stem", "head", "fixed", "section", "extends", "let", "after", "before", "if", "as", "to",
    "{", "}", "(", ")", "[", "]", ",", "=", "==", "<=", "..", "|", "->", "+", "-", "*", "/",
    "1", "0", "3.5", "-2", "true", "false", "x", "conv", "mbconv", "identity", "out", "kernel",
    '"s"', "#c", "\n", " ", "s1.depth", "step", "not", "and", "or",
]  # fmt: skip


def _check(text: str) -> None:
    try:
        space = compile_text(text, "fuzz.abs")
    except CompileError as error:
        assert error.diagnostics, "a CompileError must carry at least one diagnostic"
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for diagnostic in error.diagnostics:
            assert diagnostic.path == "fuzz.abs"
            assert 1 <= diagnostic.line <= len(lines), (diagnostic, len(lines))
            assert 1 <= diagnostic.column <= len(lines[diagnostic.line - 1]) + 1, diagnostic
            assert diagnostic.message
            assert "Traceback" not in diagnostic.message
        return
    assert space_size(space) >= 1


# derandomize: the same examples on every run (tests are deterministic).
_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@_SETTINGS
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    _check(text)


@_SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup_never_crashes(tokens: list[str]) -> None:
    _check(" ".join(tokens))


@st.composite
def mutated_seed(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SELF_CONTAINED))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "replace"]))
        start = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "delete":
            end = draw(st.integers(start, min(len(text), start + 20)))
            text = text[:start] + text[end:]
        elif kind == "insert":
            text = text[:start] + " " + draw(st.sampled_from(TOKENS)) + " " + text[start:]
        elif kind == "duplicate":
            lines = text.splitlines(keepends=True)
            index = draw(st.integers(0, max(len(lines) - 1, 0)))
            text = "".join(lines[: index + 1] + lines[index:])
        else:
            end = draw(st.integers(start, min(len(text), start + 8)))
            text = text[:start] + draw(st.sampled_from(TOKENS)) + text[end:]
    return text


@_SETTINGS
@given(mutated_seed())
def test_mutated_seed_spaces_never_crash(text: str) -> None:
    _check(text)


@_SETTINGS
@given(mutated_seed())
def test_formatting_is_idempotent_on_anything_that_parses(text: str) -> None:
    try:
        once = format_file("fuzz.abs", text)
    except CompileError:
        return
    assert format_file("fuzz.abs", once) == once


@st.composite
def small_space(draw: st.DrawFn) -> str:
    """A random valid space with choices, depths and a filter rule."""
    widths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3, unique=True))
    stages = []
    for index in range(draw(st.integers(1, 3))):
        low = draw(st.integers(1, 2))
        high = draw(st.integers(low, 3))
        kernels = draw(st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=3, unique=True))
        identity = " | identity()" if draw(st.booleans()) else ""
        stages.append(
            f"  stage s{index} {{\n    depth {low}..{high}\n"
            f"    layer conv(out = 4 * w, kernel = {{{', '.join(map(str, kernels))}}}){identity}\n  }}\n"
        )
    bound = draw(st.integers(2, 9))
    return (
        "space r {\n  input(channels = 3, size = 8)\n"
        f"  choice w = {{{', '.join(map(str, widths))}}}\n"
        + "".join(stages)
        + f"  require s0.depth + w <= {bound}\n}}\n"
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(small_space())
def test_exact_size_equals_brute_force(text: str) -> None:
    from autobuild_dsl.space.decisions import iter_architectures

    try:
        space = compile_text(text)
    except CompileError as error:
        assert "no architecture satisfies" in error.render()
        return
    assert space_size(space) == sum(1 for _ in iter_architectures(space))


# ----- formatting never changes what an expression means --------------------------------

EXPR_SPACE = """space e {{
  input(channels = 3, size = 8)
  choice a = {{1, 2, 3}}
  choice b = {{true, false}}
  choice act = {{relu, hswish}}
  let k = a * 2
  stage s {{
    depth 1..2
    choice m = {{1, 2}}
    layer conv(out = 4 * m, kernel = 3)
  }}
  require {rule}
}}
"""

_STRINGS = st.text(alphabet='ab "\\\\xy_1', max_size=6)
_LEAVES = st.one_of(
    st.integers(0, 5).map(lambda v: Const(value=v)),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(lambda v: Const(value=v)),
    st.booleans().map(lambda v: Const(value=v)),
    st.sampled_from(["relu", "hswish"]).map(lambda v: Const(value=v)),
    _STRINGS.map(lambda v: Const(value=v)),
    st.sampled_from(["a", "b", "act", "k", "s.m", "s.depth"]).map(lambda n: Ref(name=n)),
)
_BINARY_OPS = ["+", "-", "*", "/", "and", "or", "==", "!=", "<", "<=", ">", ">="]


def _extend(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.builds(
            lambda op, left, right: Binary(op=op, left=left, right=right),
            st.sampled_from(_BINARY_OPS),
            children,
            children,
        ),
        st.builds(lambda op, x: Unary(op=op, operand=x), st.sampled_from(["-", "not"]), children),
        st.builds(
            lambda f, args: Call(func=f, args=args),
            st.sampled_from(["min", "max", "abs"]),
            st.lists(children, min_size=1, max_size=2),
        ).filter(lambda c: c.func != "abs" or len(c.args) == 1),
    )


EXPRESSIONS = st.recursive(_LEAVES, _extend, max_leaves=8)


def _fully_parenthesised(expr) -> str:  # type: ignore[no-untyped-def]
    """Source text with a pair of parentheses around every operation (not the formatter's)."""
    if isinstance(expr, Const):
        return format_expr(expr, source=True)
    if isinstance(expr, Ref):
        return expr.name
    if isinstance(expr, Unary):
        space = " " if expr.op == "not" else ""
        return f"({expr.op}{space}{_fully_parenthesised(expr.operand)})"
    if isinstance(expr, Binary):
        return f"({_fully_parenthesised(expr.left)} {expr.op} {_fully_parenthesised(expr.right)})"
    return f"{expr.func}({', '.join(_fully_parenthesised(a) for a in expr.args)})"


def _outcome(text: str) -> object:
    """What a text compiles to, independent of where things are written."""
    try:
        space = compile_text(text, "e.abs")
    except CompileError as error:
        return ("error", [d.message for d in error.diagnostics])
    return (space_size(space), [(r.expr, r.text) for r in space.rules], space.ties)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(EXPRESSIONS)
def test_formatting_an_expression_is_a_fixed_point_and_keeps_the_space(expr) -> None:  # type: ignore[no-untyped-def]
    from autobuild_dsl.lang import parse_expression

    original = EXPR_SPACE.format(rule=_fully_parenthesised(expr))
    once = format_file("e.abs", original)
    assert format_file("e.abs", once) == once
    # The formatted rule parses back to the very expression that was generated.
    rule_line = next(line for line in once.splitlines() if line.strip().startswith("require"))
    located = parse_expression(rule_line.strip()[len("require ") :], "r")
    assert located is not None and located.expr == expr, rule_line
    # And the space it describes is the same: size, rules (as checked), merged choices.
    assert _outcome(once) == _outcome(original)


# ----- the size is the number of distinct architectures (and networks) ------------------


@st.composite
def strided_space(draw: st.DrawFn) -> str:
    """A small space with per-layer stride choices, stage choices and a filter rule."""
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2, unique=True))
    stages = []
    for index in range(draw(st.integers(1, 2))):
        low = draw(st.integers(1, 2))
        high = draw(st.integers(low, 3))
        kernels = draw(st.lists(st.sampled_from([1, 3]), min_size=1, max_size=2, unique=True))
        stride = ", stride = {1, 2}" if draw(st.booleans()) else ", stride = 2"
        mult = draw(st.booleans())
        # Every decision changes the network: `out` differs for every (w, m).
        out = "4 * w" + (" + 16 * m" if mult else "")
        kernel_set = ", ".join(map(str, kernels))
        alternatives = [f"conv(out = {out}, kernel = {{{kernel_set}}}{stride})"]
        if draw(st.booleans()):
            alternatives.append(f"identity(out = {out}, stride = {{1, 2}})")
        stages.append(
            f"  stage s{index} {{\n    depth {low}..{high}\n"
            + ("    choice m = {1, 2}\n" if mult else "")
            + f"    layer {' | '.join(alternatives)}\n  }}\n"
        )
    bound = draw(st.integers(2, 6))
    return (
        "space r {\n  input(channels = 3, size = 16)\n"
        f"  choice w = {{{', '.join(map(str, widths))}}}\n"
        + "".join(stages)
        + f"  require s0.depth + w <= {bound}\n}}\n"
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(strided_space())
def test_size_counts_distinct_canonical_architectures_and_networks(text: str) -> None:
    from autobuild_dsl.space.decisions import canonicalize, iter_architectures, sample
    from autobuild_dsl.space.resolve import resolve

    try:
        space = compile_text(text)
    except CompileError as error:
        assert "no architecture satisfies" in error.render()
        return
    archs = list(iter_architectures(space))
    assert space_size(space) == len(archs)
    assert len({a.model_dump_json() for a in archs}) == len(archs)
    networks = {
        tuple(
            (n.op, tuple(sorted(n.attrs.items())), n.position.block)
            for n in resolve(space, a).nodes
        )
        for a in archs
    }
    assert len(networks) == len(archs), "two canonical architectures build the same network"
    for arch in sample(space, 20, seed=0):
        assert canonicalize(space, arch.model_dump(mode="json")) == arch
