"""One error root: every library error is an `AbcError` with its own documented code, and
library messages name parameters (as `Remedy`s), never CLI flags."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest

import autobuild_dsl
from autobuild_dsl.cli.common import error_text, remedy_text
from autobuild_dsl.compile.network import NetworkBuildError
from autobuild_dsl.data.merge import MergeError, merge_files
from autobuild_dsl.errors import EXIT_COMPILE_ERROR, EXIT_USER_ERROR, AbcError, Remedy
from autobuild_dsl.lang import CompileError, compile_file
from autobuild_dsl.space.decisions import sample

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autobuild_dsl"

# Exceptions under autobuild_dsl that are not AbcErrors, and why (docs/errors.md says the same).
NOT_USER_ERRORS = {
    # A check for tests and `emit`: emit turns a mismatch into EmitError itself, so one
    # that escapes means the exporter or an op is wrong: a bug (exit 3).
    "autobuild_dsl.compile.onnx_export.OnnxMismatchError",
    # The CLI's own usage errors (a flag combination): click renders them.
    "autobuild_dsl.cli.common.UserError",
    # An AbcError as click shows it (message, flag hints, the kind's exit code).
    "autobuild_dsl.cli.common.LibraryError",
}
# A CLI flag as a user types it: `--force`, `--top-k` (not `a--b` or an en dash).
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(autobuild_dsl.__path__, prefix="autobuild_dsl.")
        if not info.name.endswith("__main__")
    ]


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("autobuild_dsl")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def _error_kinds() -> list[type[AbcError]]:
    return [c for c in _exception_classes().values() if issubclass(c, AbcError)]


def test_every_library_exception_is_an_abc_error_or_on_the_short_list() -> None:
    classes = _exception_classes()
    outside = {name for name, cls in classes.items() if not issubclass(cls, AbcError)}
    assert outside == NOT_USER_ERRORS
    # The renamed network error no longer shares its name with the language's.
    assert NetworkBuildError.__name__ != CompileError.__name__
    assert len(_error_kinds()) >= 30


def test_each_error_kind_sets_its_own_code_and_the_codes_are_unique() -> None:
    kinds = _error_kinds()
    unset = [k.__qualname__ for k in kinds if "code" not in vars(k)]
    assert not unset, f"error kinds without their own code: {unset}"
    codes = [k.code for k in kinds]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert all(re.fullmatch(r"[a-z][a-z-]*", code) for code in codes)
    assert {k.exit_code for k in kinds} <= {EXIT_USER_ERROR, EXIT_COMPILE_ERROR}
    assert CompileError.exit_code == EXIT_COMPILE_ERROR


def test_docs_list_every_code_with_its_exit_status() -> None:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z-]+)` \| `(\w+)` \| (\d) \|", text, flags=re.MULTILINE)
    documented = {code: (name, int(status)) for code, name, status in rows}
    actual = {k.code: (k.__name__, k.exit_code) for k in _error_kinds()}
    assert documented == actual
    for name in NOT_USER_ERRORS:
        assert f"`{name.rsplit('.', 1)[1]}`" in text


def _strings_outside_docstrings(tree: ast.Module) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_library_message_names_a_cli_flag() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _strings_outside_docstrings(tree):
            if FLAG.search(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "library strings name CLI flags:\n" + "\n".join(found)


def test_the_scan_would_see_a_flag_in_a_message() -> None:
    tree = ast.parse(
        'def f():\n    """Docs may say --force."""\n    raise X(f"{p} exists; pass --force")\n'
    )
    hits = [n.value for n in _strings_outside_docstrings(tree) if FLAG.search(n.value)]
    assert hits == [" exists; pass --force"]


def test_remedies_render_as_flags_for_the_cli_and_as_arguments_for_python() -> None:
    top_k = Remedy("top_k", "or more", "3")
    assert remedy_text(top_k) == "pass --top-k 3 or more"
    assert top_k.python_text() == "top_k=3 or more"
    assert Remedy("force", "to overwrite it").python_text() == "force=True to overwrite it"
    error = AbcError("x exists", remedies=(Remedy("resume", "to continue it"), top_k))
    assert error_text(error) == "x exists; pass --resume to continue it, or pass --top-k 3 or more"
    assert error_text(AbcError("plain")) == "plain"
    # A multi-line message (a list of rows) gets its hints on a line of their own.
    assert error_text(AbcError("2 bad rows:\na\nb", remedies=(top_k,))).endswith(
        "b\npass --top-k 3 or more"
    )


def test_a_refused_merge_names_a_tolerance_that_accepts_it(tmp_path: Path) -> None:
    space = compile_file(ROOT / "spaces" / "nas_bench_macro.abs")
    archs = sample(space, 2, seed=4)
    files = []
    for name, accs in (("a", [70.0, 71.0]), ("b", [70.0, 74.5])):
        rows = [
            {"arch": a.model_dump(mode="json"), "metrics": {"acc": v}}
            for a, v in zip(archs, accs, strict=True)
        ]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(path)
    with pytest.raises(MergeError, match="1 value") as refused:
        merge_files(files, space)
    assert not FLAG.search(str(refused.value))
    average, tolerance = refused.value.remedies
    assert (average.parameter, average.value) == ("average", None)
    assert tolerance.parameter == "tolerance" and tolerance.value is not None
    merged, report = merge_files(files, space, tolerance=float(tolerance.value))
    assert not report.disagreements and list(merged.metric("acc")) == [70.0, 71.0]
