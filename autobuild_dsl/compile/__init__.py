"""Compile a ResolvedNetwork into a PyTorch module and ONNX, and measure it.

- `registry`: op name -> module factory (`register_op`), and `Cond`, the side inputs
  (timestep, its embedding, context) every compiled op's `forward(x, cond)` receives;
- `torch_ops`: the CNN ops; `unet_ops`: the U-Net ops;
- `network`: `build_module`, `count_params`, `count_macs`;
- `onnx_export`: `export_onnx`, `check_onnx`; `measure`: `measure`;
- `emit`: `emit_torch`, `emit_onnx`, `load_emitted` (one architecture to a file and back);
- `batch`: `measure_file` (many architectures into a dataset file: parallel, resumable).
"""

from autobuild_dsl.compile.batch import MeasureSettings, measure_file
from autobuild_dsl.compile.emit import emit_onnx, emit_torch, load_emitted
from autobuild_dsl.compile.measure import measure
from autobuild_dsl.compile.network import (
    CompiledNetwork,
    NetworkBuildError,
    build_module,
    count_macs,
    count_params,
    example_inputs,
    params_and_macs,
)
from autobuild_dsl.compile.onnx_export import check_onnx, export_onnx
from autobuild_dsl.compile.registry import (
    Cond,
    CondDims,
    UnknownOpError,
    get_factory,
    register_op,
    registered_ops,
)

__all__ = [
    "CompiledNetwork",
    "Cond",
    "CondDims",
    "MeasureSettings",
    "NetworkBuildError",
    "UnknownOpError",
    "build_module",
    "check_onnx",
    "count_macs",
    "count_params",
    "emit_onnx",
    "emit_torch",
    "example_inputs",
    "export_onnx",
    "get_factory",
    "load_emitted",
    "measure",
    "measure_file",
    "params_and_macs",
    "register_op",
    "registered_ops",
]
