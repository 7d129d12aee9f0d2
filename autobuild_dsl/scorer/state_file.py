"""Read a member's weight file (a `torch.save`d state dict) as numpy arrays, without torch.

`torch.save` writes a zip: `<archive>/data.pkl` (the pickled dict, each tensor a call of
`torch._utils._rebuild_tensor_v2` on a storage named by a persistent id) and
`<archive>/data/<key>` (each storage's raw bytes), plus `byteorder`. Importing torch to
read 20 such files costs 1-3 s, more than the predictions made with them
(scorer.numpy_predict), so this reads them with a restricted unpickler instead.

Only what a scorer's state dict holds is accepted: a dict (or OrderedDict) of plain dense
float32 / int64 CPU tensors. Anything else (another storage type, a Parameter, a quantised
or sparse tensor, a class outside the whitelist, a damaged file) gives None: the caller
falls back to `torch.load`, which reports a damaged file as before.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np

# Storage classes `torch.save` pickles by name (`torch FloatStorage`), and their dtypes.
_STORAGE_DTYPES = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}


class _StorageType:
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2` for numpy: a copy of the strided view."""
    if hooks or metadata:
        raise pickle.UnpicklingError("tensor with hooks or metadata")
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride)) or offset < 0:
        raise pickle.UnpicklingError("bad tensor geometry")
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.shape[0]:
            raise pickle.UnpicklingError("tensor outside its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )
    return np.array(view)  # own, contiguous memory: the storage bytes may go


class _StateUnpickler(pickle.Unpickler):
    """Unpickles data.pkl with storages read from the zip. Anything a scorer's state dict
    does not hold raises UnpicklingError (as the pickle docs suggest for a restricted
    unpickler): `read_state` then returns None."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("persistent id")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType) or location != "cpu":
            raise pickle.UnpicklingError("storage")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            if len(raw) != numel * kind.dtype.itemsize:
                raise pickle.UnpicklingError("storage size")
            self._storages[key] = np.frombuffer(raw, dtype=kind.dtype)
        return self._storages[key]


def read_state(data: bytes) -> dict[str, np.ndarray] | None:
    """The state dict in `data` (a `torch.save` file's bytes) as numpy arrays, or None
    where it holds anything but plain float32 / int64 tensors (read it with torch)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].count("/") != 1:
                return None
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())
            if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
                return None
            state = _StateUnpickler(archive.read(pickles[0]), archive, prefix).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError):
        return None
    except (ValueError, TypeError, AttributeError, IndexError):  # a malformed pickle
        return None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        return None
    return dict(state)


__all__ = ["read_state"]
