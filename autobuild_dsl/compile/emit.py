"""Emit one architecture as a file: a reloadable PyTorch checkpoint, or an ONNX model.

- `emit_torch` writes one `torch.save` file holding the module's state dict and a header
  (`EmittedHeader`: the canonical architecture, the `ResolvedNetwork` it compiles to, the
  space's name and hash). `load_emitted` rebuilds the module from the header alone (no
  `.abs` file needed) and loads the weights; `torch.load(weights_only=True)` reads it, so
  loading never runs pickled code.
- `emit_onnx` exports the module (`onnx_export.export_onnx`: TorchScript exporter, opset
  17, dynamic batch; external data past 2 GB), runs it in ONNX Runtime against PyTorch on a
  seeded random input and only then moves it into place. The architecture, space name and
  hash are stored in the model's `metadata_props` (keys `abc.*`).

Both write atomically (a temporary file in the destination folder, renamed into place) and
refuse to replace an existing file unless `overwrite=True`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from autobuild_dsl import io as abc_io
from autobuild_dsl.compile.network import CompiledNetwork, build_module
from autobuild_dsl.compile.onnx_export import OnnxExportError, check_onnx, export_onnx
from autobuild_dsl.errors import OVERWRITE, AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space
from autobuild_dsl.space.resolve import resolve
from autobuild_dsl.space.resolved import ResolvedNetwork

TORCH_FORMAT = "autobuild-dsl/torch-module/1"
# ONNX metadata_props keys.
META_SPACE = "abc.space"
META_SPACE_HASH = "abc.space_hash"
META_ARCH = "abc.arch"


class EmitError(AbcError, ValueError):
    """An emitted file that cannot be written or read (exists, wrong kind, wrong space)."""

    code = "emit"


class EmittedHeader(BaseModel):
    """What an emitted PyTorch file says about itself, besides the weights."""

    model_config = ConfigDict(frozen=True)

    format: str = TORCH_FORMAT
    space: str
    space_hash: str
    arch: dict[str, Any]  # the canonical Architecture, as JSON
    network: ResolvedNetwork
    torch_version: str = torch.__version__

    def architecture(self) -> Architecture:
        return Architecture.model_validate(self.arch)


class OnnxEmitted(BaseModel):
    """Where an ONNX model went, and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    data_path: Path | None  # the external-data file of a model over 2 GB
    max_abs_diff: float


def space_hash(space: Space) -> str:
    """The space's digest (`Space.digest()`: its meaning, not its source positions)."""
    return space.digest()


def _module_for(
    space: Space, arch: Architecture, module: nn.Module | None, seed: int
) -> tuple[nn.Module, ResolvedNetwork]:
    net = resolve(space, arch)
    if module is None:
        torch.manual_seed(seed)  # seeded random weights: the same file from the same call
        module = build_module(net, device="cpu")
        calibrate_norms(module, net, seed)
    return module.eval(), net


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise EmitError(f"{path} exists", remedies=(OVERWRITE,))
    if path.is_dir():
        raise EmitError(f"{path} is a folder")


def emit_torch(
    path: str | os.PathLike[str],
    space: Space,
    arch: Architecture,
    module: nn.Module | None = None,
    *,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Write `arch`'s module (`module`, e.g. trained weights; default: built with seeded
    random weights) and its header to `path`, atomically."""
    out = Path(path)
    _refuse_existing(out, overwrite)
    module, net = _module_for(space, arch, module, seed)
    header = EmittedHeader(
        space=space.name,
        space_hash=space_hash(space),
        arch=arch.model_dump(mode="json"),
        network=net,
    )
    payload = {"header": header.model_dump_json(), "state_dict": module.state_dict()}
    with abc_io.atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out


def read_emitted(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[EmittedHeader, dict[str, torch.Tensor]]:
    """The header and the state dict of a file written by `emit_torch`."""
    try:
        payload = torch.load(Path(path), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise EmitError(f"{path}: no such file") from None
    except Exception as error:  # torch.load raises many kinds for a file it cannot read
        raise EmitError(f"{path}: not an emitted PyTorch module ({error})") from None
    if not isinstance(payload, dict) or "header" not in payload or "state_dict" not in payload:
        raise EmitError(f"{path}: not an emitted PyTorch module (no header)")
    try:
        header = EmittedHeader.model_validate_json(payload["header"])
    except ValidationError as error:
        raise EmitError(f"{path}: its header is not valid: {error}") from None
    if header.format != TORCH_FORMAT:
        raise EmitError(f"{path}: format '{header.format}', expected '{TORCH_FORMAT}'")
    return header, payload["state_dict"]


def load_emitted(
    path: str | os.PathLike[str],
    space: Space | None = None,
    device: torch.device | str = "cpu",
) -> CompiledNetwork:
    """Rebuild the module stored by `emit_torch` (in eval mode) and load its weights.

    Needs no space: the header holds the resolved network. With `space`, the file must come
    from that space, unchanged since (same name and hash)."""
    header, state = read_emitted(path, device)
    if space is not None:
        if header.space != space.name:
            raise EmitError(f"{path}: emitted from space '{header.space}', not '{space.name}'")
        if header.space_hash != space_hash(space):
            raise EmitError(f"{path}: space '{space.name}' has changed since this file was emitted")
    # Built on meta and given the file's tensors: no random initialisation to throw away.
    module = build_module(header.network, device="meta")
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise EmitError(f"{path}: the weights do not fit the network: {error}") from None
    return module.to(device).eval()


def _set_onnx_metadata(path: Path, entries: dict[str, str]) -> None:
    import onnx

    # External tensors stay where they are: only the graph file is rewritten.
    model = onnx.load(str(path), load_external_data=False)
    known = {p.key: p for p in model.metadata_props}
    for key, value in entries.items():
        prop = known.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save_model(model, str(path))


def emit_onnx(
    path: str | os.PathLike[str],
    space: Space,
    arch: Architecture,
    module: nn.Module | None = None,
    *,
    overwrite: bool = False,
    seed: int = 0,
    atol: float | None = 1e-4,
) -> OnnxEmitted:
    """Export `arch`'s module to ONNX at `path` (plus `<path>.data` when over 2 GB) and
    check it in ONNX Runtime against PyTorch; the file is moved into place only when the
    largest absolute difference is within `atol` (None: never fails)."""
    out = Path(path)
    _refuse_existing(out, overwrite)
    data_out = out.with_name(out.name + ".data")
    module, net = _module_for(space, arch, module, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = scratch / out.name  # same name: the external-data reference stays valid
        try:
            export_onnx(module, net, staged)
        except OnnxExportError as error:
            raise EmitError(str(error)) from None
        _set_onnx_metadata(
            staged,
            {
                META_SPACE: space.name,
                META_SPACE_HASH: space_hash(space),
                META_ARCH: json.dumps(arch.model_dump(mode="json"), separators=(",", ":")),
            },
        )
        # Stage by stage first: it says where a difference starts.
        if atol is not None and isinstance(module, CompiledNetwork):
            problem = check_stage_outputs(module, staged, net, seed=seed)
            if problem is not None:
                raise EmitError(f"{problem}; nothing was written")
        diff = check_onnx(module, staged, atol=None, net=net, seed=seed)
        if atol is not None and not diff <= atol:
            raise EmitError(
                f"ONNX Runtime differs from PyTorch by {diff:.3g} > {atol:g} on a random input; "
                "nothing was written"
            )
        staged_data = scratch / data_out.name
        if staged_data.exists():
            abc_io.replace_into(staged_data, data_out)
            data_path: Path | None = data_out
        else:
            data_out.unlink(missing_ok=True)  # a stale companion of an older, larger model
            data_path = None
        abc_io.replace_into(staged, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return OnnxEmitted(path=out, data_path=data_path, max_abs_diff=diff)


# Relative tolerance of the stage-by-stage check: float32 through a few hundred ops.
STAGE_RTOL = 1e-3


def calibrate_norms(module: nn.Module, net: ResolvedNetwork, seed: int) -> None:
    """Give a randomly initialised network's batch norms the statistics of a random batch,
    so every stage sees activations of unit variance: a deep random network's output then
    still depends on its input, and a wrong operation anywhere shows in the check."""
    from autobuild_dsl.compile.network import example_inputs

    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration pass
    inputs = example_inputs(net, batch=8, device="cpu", seed=seed + 1)
    module.train()
    try:
        with torch.no_grad():
            module(**inputs)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.eval()


def _stage_taps(module: CompiledNetwork, net: ResolvedNetwork) -> list[tuple[str, str, nn.Module]]:
    """(label, ONNX node-name prefix, submodule) at the end of every stage, and the output."""
    ends = {span.end - 1: number for number, span in enumerate(net.residuals)}
    last: dict[str, int] = {}
    for index, node in enumerate(net.nodes):
        if node.position.part == "stage":
            last[node.position.block] = index
    taps = []
    for stage, index in last.items():
        if index in ends:
            number = ends[index]
            taps.append((f"stage {stage}", f"/shortcuts.{number}/", module.shortcuts[number]))
        else:
            taps.append((f"stage {stage}", f"/nodes.{index}/", module.nodes[index]))
    return taps


def check_stage_outputs(
    module: CompiledNetwork,
    onnx_path: str | os.PathLike[str],
    net: ResolvedNetwork,
    *,
    seed: int = 0,
    rtol: float = STAGE_RTOL,
) -> str | None:
    """Compare ONNX Runtime with PyTorch at the end of every stage and at the output, by
    the largest difference relative to the largest activation there; None when all agree,
    else what differs first (a wrong operation shows at the stage that holds it)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from autobuild_dsl.compile.network import example_inputs

    model = onnx.load(str(onnx_path))
    graph = model.graph
    outputs = {o.name for o in graph.output}
    taps: list[tuple[str, str, nn.Module]] = []
    for label, prefix, sub in _stage_taps(module, net):
        produced = [n.output[0] for n in graph.node if n.name.startswith(prefix) and n.output]
        if produced:  # a pure pass-through (an identity) leaves nothing to tap
            taps.append((label, produced[-1], sub))
    for _, name, _ in taps:
        if name not in outputs:
            graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
            outputs.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inputs = example_inputs(net, batch=2, device="cpu", seed=seed + 2)
    names = [name for _, name, _ in taps] + ["out"]
    got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        sub.register_forward_hook(lambda _m, _i, out, i=i: captured.setdefault(i, out))
        for i, (_, _, sub) in enumerate(taps)
    ]
    try:
        with torch.no_grad():
            want_out = module(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    wants = [captured[i] for i in range(len(taps))] + [want_out]
    labels = [label for label, _, _ in taps] + ["the output"]
    for label, have, want in zip(labels, got, wants, strict=True):
        want = want.numpy()
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        diff = float(np.max(np.abs(have - want))) if want.size else 0.0
        if not diff <= rtol * max(scale, 1e-6):
            return (
                f"ONNX Runtime differs from PyTorch at {label}: largest difference "
                f"{diff:.3g} is {diff / max(scale, 1e-6):.3g} of the largest activation "
                f"(tolerance {rtol:g})"
            )
    return None


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (without loading its weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
