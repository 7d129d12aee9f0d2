"""Evaluators that run the user's own code: a Python callable or a shell command.

See `search.evaluators` for the interface and the spec syntax.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autobuild_dsl.search.evaluators import (
    ARCH_PLACEHOLDER,
    EvaluationError,
    Evaluator,
    PythonConfig,
    _file_digest,
    _metrics_of,
)
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space

# --------------------------------------------------------------------------- python


class PythonEvaluator(Evaluator):
    """`FUNCTION(arch)` (or `FUNCTION(arch, space=space)` if it takes `space`) returns a
    mapping of metric names to numbers."""

    def __init__(self, config: PythonConfig, space: Space) -> None:
        super().__init__(config, space)
        self._function, self._source = _import_function(config.function)
        try:
            parameters = inspect.signature(self._function).parameters
        except (TypeError, ValueError):
            parameters = {}
        self._pass_space = "space" in parameters

    def _fingerprint(self) -> str:
        # Editing the user's source invalidates its cached results.
        return f"source={_file_digest(self._source)}" if self._source else ""

    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        results = []
        for arch in archs:
            try:
                if self._pass_space:
                    value = self._function(arch, space=self.space)
                else:
                    value = self._function(arch)
            except EvaluationError:
                raise
            except Exception as error:
                raise EvaluationError(
                    f"{self.config.function} failed on {arch.key()}: "
                    f"{type(error).__name__}: {error}"
                ) from error
            results.append(_metrics_of(value, self.config.function))
        return results


def _import_function(spec: str) -> tuple[Callable[..., Any], Path | None]:
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.exists():
                raise EvaluationError(f"{spec}: no such file {path}")
            module_name = f"_abc_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
            module = sys.modules.get(module_name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(module_name, path)
                if loader_spec is None or loader_spec.loader is None:
                    raise EvaluationError(f"{spec}: cannot load {path}")
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[module_name] = module
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except EvaluationError:
        raise
    except Exception as error:
        raise EvaluationError(f"{spec}: cannot import: {type(error).__name__}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise EvaluationError(f"{spec}: '{name}' is not a function of {module.__name__}")
    source = getattr(module, "__file__", None)
    return function, Path(source) if source else None


# --------------------------------------------------------------------------- command


class CommandEvaluator(Evaluator):
    """Run the user's shell command once per architecture.

    The architecture's JSON (`Architecture.to_json()`) goes to the command on stdin, or,
    when the template holds `{arch}`, into a temporary file whose quoted path replaces it.
    The last non-empty line of stdout must be a JSON object of metrics.
    """

    def _fingerprint(self) -> str:
        # Hash any file the command names (a script), so editing it invalidates the cache.
        digests = []
        cwd = Path(self.config.cwd or ".")
        try:
            tokens = shlex.split(self.config.command.replace(ARCH_PLACEHOLDER, ""))
        except ValueError:
            tokens = []
        for token in tokens:
            path = Path(token) if Path(token).is_absolute() else cwd / token
            try:  # a word may be no path at all (too long a name, unreadable)
                if len(token) < 4096 and path.is_file():
                    digests.append(f"{token}={_file_digest(path)}")
            except OSError:
                continue
        return ",".join(digests)

    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        return [self._one(arch) for arch in archs]

    def _one(self, arch: Architecture) -> dict[str, float]:
        payload = arch.to_json()
        template = self.config.command
        temp_path: str | None = None
        try:
            if ARCH_PLACEHOLDER in template:
                fd, temp_path = tempfile.mkstemp(prefix="abc-arch-", suffix=".json")
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(payload)
                command = template.replace(ARCH_PLACEHOLDER, shlex.quote(temp_path))
                stdin = ""
            else:
                command, stdin = template, payload
            try:
                done = subprocess.run(
                    command,
                    shell=True,
                    input=stdin,
                    capture_output=True,
                    text=True,
                    timeout=self.config.timeout,
                    cwd=self.config.cwd,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise EvaluationError(
                    f"command timed out after {self.config.timeout:g} s on {arch.key()}"
                ) from None
        finally:
            if temp_path is not None:
                Path(temp_path).unlink(missing_ok=True)
        if done.returncode != 0:
            raise EvaluationError(
                f"command exited with status {done.returncode} on {arch.key()}: "
                f"{_tail(done.stderr) or _tail(done.stdout) or '(no output)'}"
            )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if not lines:
            raise EvaluationError(f"command printed nothing on {arch.key()}; expected JSON metrics")
        try:
            value = json.loads(lines[-1])
        except ValueError:
            raise EvaluationError(
                f"command's last output line is not JSON: {lines[-1][:200]!r}"
            ) from None
        return _metrics_of(value, "command output")


def _tail(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
