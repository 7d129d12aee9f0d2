"""Architectures as graphs for the scorer: the sequence-graph format (`encode.py`)."""

from autobuild_dsl.graphs.encode import EncodeError, FeatureCategory, GraphEncoder, SequenceGraph

__all__ = ["EncodeError", "FeatureCategory", "GraphEncoder", "SequenceGraph"]
