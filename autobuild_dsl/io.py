"""One output discipline for every file the tool writes.

- `write_atomic` / `atomic_path`: the whole file or nothing. The data goes to a temporary
  file next to the target and is renamed over it. A symlinked target is followed (the link
  stays a link); the result keeps an existing target's permission bits, and a new file gets
  the usual `0o666 & ~umask` (the temporary file is created with mode 0o666, so the kernel
  applies the umask: no process-wide umask flip). Data is fsync'd before the rename and the
  folder after it (`FSYNC`), so a crash leaves the old file or the new one. Caches that
  are rebuilt when a file is missing pass `durable=False`: still whole-or-nothing, no fsync
  (which costs ~10 ms a file), so a crash may lose the newest files.
- `output_lock`: an exclusive advisory lock (fcntl.flock on a hidden `.NAME.lock` next to
  the output) for outputs that are appended to or resumed; a second writer gets a clear
  `OutputBusy` instead of interleaving rows.
- `write_claim` / `check_claim`: a hidden sidecar `.NAME.abc.json` that names the command
  and what it depends on (space digest, metrics, ...), so resuming refuses a file that is
  not the command's own instead of "repairing" it.
- `die_with_parent`: a pool initializer; on Linux a worker gets SIGKILL when its parent
  dies (prctl PR_SET_PDEATHSIG), so a kill -9 of `abc train --jobs 4` leaves no workers.
- `file_digest`: the SHA-256 of a file's bytes (what caches key a file on).

Nothing here prints; every failure is an `OutputError` (or an OSError from the system).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autobuild_dsl.errors import OVERWRITE, AbcError

# fsync file data before the rename and the folder entry after it.
FSYNC = True


class OutputError(AbcError):
    """An output that cannot be written as asked (exists, busy, not this command's own)."""

    code = "output"


class OutputExists(OutputError):
    """The output is there already and overwriting was not asked for."""

    code = "output-exists"


class OutputBusy(OutputError):
    """Another process holds the output's lock."""

    code = "output-busy"


class ForeignOutput(OutputError):
    """The output was written by another command or with other settings; it cannot be resumed."""

    code = "output-foreign"


def target_of(path: str | os.PathLike[str]) -> Path:
    """Where writing `path` really lands: symlinks (of the file and its folders) followed."""
    path = Path(path)
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _mode_for(target: Path) -> int | None:
    """The permission bits to give the new file: the existing file's, or None (new file:
    the temporary file's umask-derived mode is already right)."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None


def _fsync_dir(folder: Path) -> None:
    if not FSYNC:
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, overwrite: bool = True, suffix: str = "", durable: bool = True
) -> Iterator[Path]:
    """A temporary path to write (by any means: savefig, torch.save, ...) that replaces
    `path` when the block ends without an error; removed otherwise. `suffix` keeps a file
    extension on the temporary name for writers that look at it."""
    target = target_of(path)
    if not overwrite and target.exists():
        raise OutputExists(f"{path} exists", remedies=(OVERWRITE,))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target).with_suffix(".tmp" + suffix) if suffix else _temp_name(target)
    # O_EXCL with mode 0o666: the kernel applies the umask, no umask() flip needed.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        replace_into(tmp, target, durable=durable)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def append_synced(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Append `data` and fsync before returning: a record appended (an evaluation, a
    search step) survives a kill -9 right after it. A journal, not a whole-file rewrite."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload)
        if FSYNC:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = True, durable: bool = True
) -> Path:
    """Write the whole file or nothing (see the module notes); returns the real target."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, overwrite=overwrite, durable=durable) as tmp, tmp.open("wb") as handle:
        handle.write(payload)
    return target_of(path)


def replace_into(
    staged: str | os.PathLike[str], path: str | os.PathLike[str], *, durable: bool = True
) -> Path:
    """Move a finished file (staged in the target's file system) over `path` with the same
    rules as `atomic_path`: symlink followed, the old file's mode kept, data fsync'd."""
    target = target_of(path)
    mode = _mode_for(target)
    if mode is not None:
        os.chmod(staged, mode)
    if FSYNC and durable:
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(staged, target)
    if durable:
        _fsync_dir(target.parent)
    return target


def lock_path(path: str | os.PathLike[str]) -> Path:
    target = target_of(path)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on `path` (an output file or folder) for the block; a second
    holder fails at once with `OutputBusy`. The lock file is removed on release."""
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode("ascii").strip()
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputBusy(
                f"{path}: the {what} is being written by another abc process{by}; wait for "
                "it to finish, or use another output"
            ) from None
        # The previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a dead file; start again on the live one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)  # closing releases the lock


def claim_path(path: str | os.PathLike[str]) -> Path:
    target = target_of(path)
    return target.with_name(f".{target.name}.abc.json")


def write_claim(path: str | os.PathLike[str], command: str, **fields: Any) -> None:
    """Record which command owns the output `path` and what it depends on."""
    claim = {"command": command, **fields}
    write_atomic(claim_path(path), json.dumps(claim, sort_keys=True, indent=1) + "\n")


def read_claim(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    file = claim_path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_claim(path: str | os.PathLike[str], command: str, **fields: Any) -> bool:
    """Refuse (`ForeignOutput`) an output whose sidecar names another command or other
    dependencies. True: the sidecar matches; False: there is none (an older output)."""
    claim = read_claim(path)
    if claim is None:
        return False
    if claim.get("command") != command:
        owner = claim.get("command")
        by = f"`abc {owner}`" if isinstance(owner, str) else "something else"
        raise ForeignOutput(f"{path}: written by {by}, not `abc {command}`; cannot resume it")
    differ = [
        name for name, value in fields.items() if _jsonable(claim.get(name)) != _jsonable(value)
    ]
    if differ:
        details = "; ".join(
            f"{name}: {_show(claim.get(name))} in the file, {_show(fields[name])} now"
            for name in differ
        )
        raise ForeignOutput(
            f"{path}: cannot resume: it was written with other settings ({details})"
        )
    return True


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, str) and len(value) > 16:
        return value[:12] + "..."
    return "none" if value is None else str(value)


def remove_claim(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        claim_path(path).unlink()


def cache_dir(env: str, name: str) -> Path:
    """`$<env>` when set, else `$XDG_CACHE_HOME/autobuild-dsl/<name>` (~/.cache/...)."""
    explicit = os.environ.get(env)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autobuild-dsl" / name


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def die_with_parent() -> None:
    """Pool initializer: make this worker die when its parent does (Linux), so killing
    the parent with SIGKILL does not leave workers running."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may have died before prctl took effect: we were re-parented already.
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)


__all__ = [
    "FSYNC",
    "ForeignOutput",
    "OutputBusy",
    "OutputError",
    "OutputExists",
    "atomic_path",
    "check_claim",
    "claim_path",
    "die_with_parent",
    "lock_path",
    "output_lock",
    "read_claim",
    "remove_claim",
    "replace_into",
    "target_of",
    "write_atomic",
    "write_claim",
]
