"""Architectures as graphs for the scorer: the sequence-graph format (`encode.py`) and the
fine-grained ONNX-IR format (`ir.py`; rooted-subgraph reports of IR runs are in `build/ir_rank.py`).

Names are imported on first use: `ir.py` needs PyG and ONNX, which most callers of the
sequence encoder never touch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autobuild_dsl.lazy import lazy_names

if TYPE_CHECKING:
    from autobuild_dsl.graphs.encode import (
        EncodeError,
        FeatureCategory,
        GraphEncoder,
        GraphTensors,
        SequenceGraph,
    )
    from autobuild_dsl.graphs.ir import IrEncoder, IrError, IrGraph

_WHERE = {
    "EncodeError": "encode",
    "FeatureCategory": "encode",
    "GraphEncoder": "encode",
    "GraphTensors": "encode",
    "SequenceGraph": "encode",
    "IrEncoder": "ir",
    "IrError": "ir",
    "IrGraph": "ir",
}


__getattr__ = lazy_names(__name__, _WHERE)


__all__ = [
    "EncodeError",
    "FeatureCategory",
    "GraphEncoder",
    "GraphTensors",
    "IrEncoder",
    "IrError",
    "IrGraph",
    "SequenceGraph",
]
