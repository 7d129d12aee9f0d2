"""An on-disk cache of evaluations, so a rerun or a resumed search never pays twice.

One append-only JSON-lines file per evaluator identity (named by its hash) in a cache
folder. Each batch of results is appended with one write and fsync'd, so an interruption
loses at most the batch in flight; a torn last line is ignored when the file is read back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from autobuild_dsl import io as abc_io


def default_cache_dir() -> Path:
    """`$ABC_CACHE_DIR`, else `$XDG_CACHE_HOME/autobuild-dsl/evaluations` (~/.cache/...)."""
    return abc_io.cache_dir("ABC_CACHE_DIR", "evaluations")


def identity_hash(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]


class EvaluationCache:
    """Metrics by network key (`space.equivalence.network_keyer`, as the runner keys its
    evaluations: equivalent architectures share one entry), for one evaluator identity."""

    def __init__(self, directory: Path, identity: str) -> None:
        self.identity = identity
        self.path = Path(directory) / f"{identity_hash(identity)}.jsonl"
        self._entries: dict[str, dict[str, float]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            data = handle.read()
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # a line torn by an interrupted write
            if (
                isinstance(entry, dict)
                and "key" in entry
                and isinstance(entry.get("metrics"), dict)
            ):
                self._entries[entry["key"]] = {k: float(v) for k, v in entry["metrics"].items()}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, float] | None:
        found = self._entries.get(key)
        return dict(found) if found is not None else None

    def put_many(self, items: Sequence[tuple[str, Mapping[str, float]]]) -> None:
        """Record results: one append, flushed to disk before returning."""
        fresh = [(k, dict(m)) for k, m in items if k not in self._entries]
        if not fresh:
            return
        lines = []
        for key, metrics in fresh:
            # Python's json writes NaN/Infinity and reads them back, so results are exact.
            lines.append(json.dumps({"key": key, "metrics": metrics}, separators=(",", ":")))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        header = ""
        if new_file:
            header = json.dumps({"evaluator": self.identity}) + "\n"
        # Start on a fresh line if a previous writer was cut off mid-line.
        prefix = "" if new_file or _ends_with_newline(self.path) else "\n"
        abc_io.append_synced(self.path, header + prefix + "\n".join(lines) + "\n")
        for key, metrics in fresh:
            self._entries[key] = metrics


def _ends_with_newline(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return True
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) == b"\n"
