"""ONNX export of compiled networks, and a check of ONNX Runtime against PyTorch.

The exporter is chosen deliberately: torch 2.13's default (`dynamo=True`) needs the
`onnxscript` package, which this project does not depend on, so we use the TorchScript
exporter (`dynamo=False`) with a fixed opset and a dynamic batch axis on every input and
the output. Models whose weights pass protobuf's 2 GB limit are written with external data
(one `<name>.data` file next to the `.onnx`), which needs a path.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from autobuild_dsl.compile.network import example_inputs
from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.resolved import ResolvedNetwork

OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1  # bytes; a ModelProto may not be larger


class OnnxExportError(AbcError, RuntimeError):
    """The network cannot be exported to ONNX (no weights, over 2 GB in memory, the exporter failed)."""

    code = "onnx-export"


class OnnxMismatchError(AssertionError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


def _param_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _spec_of(module: nn.Module, net: ResolvedNetwork | None) -> ResolvedNetwork:
    spec = net if net is not None else getattr(module, "spec", None)
    if spec is None:
        raise ValueError("the ResolvedNetwork is needed to know the network's inputs")
    return spec


def export_call(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    target: io.BytesIO | str,
    *,
    opset: int = OPSET,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    export_params: bool = True,
) -> None:
    """The one call of the exporter: `module(**inputs)` to ONNX at `target` (a path or a
    buffer) with the TorchScript exporter (`dynamo=False`: no onnxscript needed), output
    `out`, constants folded (in eval mode Conv + BatchNorm fold into Conv)."""
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (),
            target,  # type: ignore[arg-type]
            kwargs=inputs,
            input_names=list(inputs),
            output_names=["out"],
            opset_version=opset,
            dynamo=False,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            export_params=export_params,
        )


def export_onnx(
    module: nn.Module,
    net: ResolvedNetwork | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = OPSET,
) -> bytes | Path:
    """Export `module` (a CompiledNetwork of `net`) to ONNX.

    Inputs are named x, timestep, context (those the input spec has) and the output `out`;
    axis 0 of each is the dynamic `batch`. With `path=None` the model comes back as bytes
    (only for models under 2 GB); otherwise it is written to `path` (with external data when
    over 2 GB) and the path comes back.
    """
    spec = _spec_of(module, net)
    if any(p.device.type == "meta" for p in module.parameters()):
        raise OnnxExportError("a module on the meta device has no weights to export")
    large = _param_bytes(module) > PROTOBUF_LIMIT - (64 << 20)  # leave room for the graph
    if path is None and large:
        raise OnnxExportError("the model is over 2 GB: give a path to write it with external data")

    device = next(module.parameters(), torch.empty(0)).device
    inputs = example_inputs(spec, batch=1, device=device, seed=0)
    names = list(inputs)
    dynamic = {name: {0: "batch"} for name in [*names, "out"]}
    was_training = module.training
    module.eval()
    target: io.BytesIO | str
    scratch: Path | None = None
    if path is None:
        target = io.BytesIO()
    else:
        out_path = Path(path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if large:
            # The exporter writes one file per large tensor next to the model; export into a
            # private folder and gather them into one `<name>.data` at the destination.
            scratch = Path(tempfile.mkdtemp(prefix="abs-onnx-", dir=out_path.parent))
            target = str(scratch / "model.onnx")
        else:
            target = str(out_path)
    try:
        export_call(module, inputs, target, opset=opset, dynamic_axes=dynamic)
        if scratch is not None:
            model = onnx.load(str(target), load_external_data=True)
            data_name = out_path.name + ".data"
            (out_path.parent / data_name).unlink(missing_ok=True)
            onnx.save_model(
                model,
                str(out_path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
    except Exception as error:  # the exporter raises many types; name the network
        raise OnnxExportError(f"ONNX export of {spec.space} failed: {error}") from error
    finally:
        module.train(was_training)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if isinstance(target, io.BytesIO):
        return target.getvalue()
    return out_path


def check_onnx(
    module: nn.Module,
    onnx_model: str | os.PathLike[str] | bytes,
    atol: float | None = 1e-4,
    *,
    net: ResolvedNetwork | None = None,
    seed: int = 0,
    batch: int = 1,
) -> float:
    """Run the ONNX model in ONNX Runtime (CPU) and the module in PyTorch on the same seeded
    random input; return the largest absolute difference of the outputs. Raises
    `OnnxMismatchError` when it exceeds `atol` (None: never raises)."""
    import onnxruntime as ort

    spec = _spec_of(module, net)
    inputs = example_inputs(spec, batch=batch, device="cpu", seed=seed)
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    (got,) = session.run(["out"], feed)
    device = next(module.parameters(), torch.empty(0)).device
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = module(**{k: v.to(device) for k, v in inputs.items()}).cpu().numpy()
    finally:
        module.train(was_training)
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if atol is not None and not diff <= atol:
        raise OnnxMismatchError(f"ONNX Runtime differs from PyTorch by {diff:.3g} > {atol:g}")
    return diff


def export_to_temp(module: nn.Module, net: ResolvedNetwork | None = None) -> Path:
    """Export into a fresh temporary folder (the caller removes it); for large models."""
    folder = Path(tempfile.mkdtemp(prefix="abs-onnx-"))
    result = export_onnx(module, net, folder / "model.onnx")
    assert isinstance(result, Path)
    return result
