"""What ranking and building compute that is a pure function of a run, kept in the run
folder.

`abc rank` and `abc build` run 20 members' forward passes over every module, read the
members' FE-MLP tables, predict the built networks and re-read the labeled data (to mark
feature values no label holds) on every call, though all of it depends on the run alone.
It is kept under RUN/cache/, written atomically (`autobuild_dsl.io`):

  rank-SCORE-SELECTION.npz   each member's module norms, the modules' node counts
  importance.json            the ensemble's feature importance (design.importance)
  predict-KEY.npz            the ensemble's predictions of one set of architectures
                             (design.workflow; the newest 32 are kept)
  seen-values.json           per feature category, the vocabulary indices the data holds

`abc train` writes them for the default options at its end
(design.ranking_workflow.prime_cache), so a user's first `abc rank` reads them.

Each entry records the key it was computed for: a SHA-256 of the run's content (its
config, member records and the bytes of the members' weight files, so a cache check reads
files and needs no torch; a model changed in memory after loading counts as other
weights: scorer.records.LoadedMember.weights_digest), the space digest, this cache's
format version and what was asked (score kind, global assignments, units, the modules
scored; the architectures predicted); the seen values key on the data file's bytes. An
entry whose key differs is recomputed and replaced, so a retrained run or an edited data
file never reads old numbers, and what was computed is kept only when the run's key is
unchanged afterwards (weights replaced while it ran are not filed under the old bytes); a
change to how the numbers are computed must bump CACHE_VERSION. A damaged entry is
recomputed; a run folder that cannot be written (read-only) is simply not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autobuild_dsl import io as abc_io
from autobuild_dsl.design.rank_model import _globals_key

if TYPE_CHECKING:
    from autobuild_dsl.design.module_sets import _Modules
    from autobuild_dsl.scorer.records import TrainedRun

# Bump when what is stored, or how it is computed, changes.
CACHE_VERSION = 1
CACHE_DIR = "cache"


def run_digest(run: TrainedRun) -> str:
    """SHA-256 of what a run computes with: its configuration, each member's record and
    each member's weights (`LoadedMember.weights_digest`: the weight file's bytes while
    the model is not loaded, so a cache check needs no torch; a model changed in memory
    after loading is a different run, whatever its files say)."""
    digest = hashlib.sha256(run.config.model_dump_json().encode("utf-8"))
    for member in run.members:
        digest.update(member.record.model_dump_json().encode("utf-8"))
        digest.update(member.weights_digest().encode())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    """A SHA-256 over the format version and `parts` (JSON)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def norms_entry(
    run: TrainedRun, score: str, jobs: list[tuple[Any, Any, _Modules, int]]
) -> tuple[str, str]:
    """(entry name, key) of the members' module norms for these ranking jobs (design.rank:
    each (globals, context, modules, excluded)). One entry per score kind and choice of
    globals and units, so a retrained run replaces its entry instead of adding one; the key
    covers the run's content, its space, the score kind and every scored module."""
    asked = [(_globals_key(v), _globals_key(c), m.unit.name) for v, c, m, _ in jobs]
    modules = hashlib.sha256()
    for values, context, kept, excluded in jobs:
        modules.update(repr((_globals_key(values), _globals_key(context), excluded)).encode())
        modules.update(kept.unit.name.encode() + kept.module_ids().tobytes())
    key = cache_key(run_digest(run), run.space.digest(), score, modules.hexdigest())
    return f"rank-{score}-{cache_key(asked)[:16]}", key


def _folder(run_path: str | Path) -> Path:
    return Path(run_path) / CACHE_DIR


def load_arrays(run_path: str | Path, name: str, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under `name` when they were computed for `key`; else None."""
    file = _folder(run_path) / f"{name}.npz"
    try:
        with np.load(file, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            return {k: stored[k] for k in stored.files if k != "key"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent, unreadable or truncated: recompute


def save_arrays(run_path: str | Path, name: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    file = _folder(run_path) / f"{name}.npz"
    try:
        with abc_io.atomic_path(file, suffix=".npz", durable=False) as tmp:
            np.savez(tmp, key=np.asarray(key), **arrays)
    except OSError:
        pass  # a read-only run folder: no cache, the next call computes again


def prune(run_path: str | Path, prefix: str, kept: int) -> None:
    """Remove all but the `kept` newest entries whose name starts with `prefix`."""
    try:
        entries = sorted(
            _folder(run_path).glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime_ns, reverse=True
        )
        for entry in entries[kept:]:
            entry.unlink(missing_ok=True)
    except OSError:
        pass  # read-only, or removed meanwhile: nothing to keep small


def load_json(run_path: str | Path, name: str, key: str) -> Any:
    """The value stored under `name` when it was computed for `key`; else None."""
    file = _folder(run_path) / f"{name}.json"
    try:
        stored = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return stored.get("value")


def save_json(run_path: str | Path, name: str, key: str, value: Any) -> None:
    text = json.dumps({"key": key, "value": value}, sort_keys=True)
    with contextlib.suppress(OSError):  # read-only run folder: not cached
        abc_io.write_atomic(_folder(run_path) / f"{name}.json", text, durable=False)


file_digest = abc_io.file_digest


__all__ = [
    "CACHE_DIR",
    "CACHE_VERSION",
    "cache_key",
    "file_digest",
    "load_arrays",
    "load_json",
    "norms_entry",
    "prune",
    "run_digest",
    "save_arrays",
    "save_json",
]
