"""Architectures as graphs for the scorer: the sequence-graph format (`encode.py`) and the
fine-grained ONNX-IR format (`ir.py`; rooted-subgraph reports of IR runs in `ir_rank.py`)."""

from autobuild_dsl.graphs.encode import EncodeError, FeatureCategory, GraphEncoder, SequenceGraph
from autobuild_dsl.graphs.ir import IrEncoder, IrError, IrGraph

__all__ = [
    "EncodeError",
    "FeatureCategory",
    "GraphEncoder",
    "IrEncoder",
    "IrError",
    "IrGraph",
    "SequenceGraph",
]
