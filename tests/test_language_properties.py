"""Property tests: no text makes the compiler raise anything but located diagnostics."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobuild_dsl.lang import CompileError, compile_text
from autobuild_dsl.lang.formatter import format_file
from autobuild_dsl.space.decisions import space_size

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


_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


@settings(max_examples=40, deadline=None)
@given(small_space())
def test_exact_size_equals_brute_force(text: str) -> None:
    from autobuild_dsl.space.decisions import iter_architectures

    try:
        space = compile_text(text)
    except CompileError as error:
        assert "no architecture satisfies" in error.render()
        return
    assert space_size(space) == sum(1 for _ in iter_architectures(space))
