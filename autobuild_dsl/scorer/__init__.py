"""AutoBuild scorers: the FE-MLP + GATv2 network with a ranked embedding space, its loss,
training, ensembles and run folders.

    train_run(space, dataset, "acc - 0.5*lat", "RUN/")   # train into a run folder
    run = load_run("RUN/")                                # the trained ensemble
    mean, spread = predict(run, graphs)                   # predictions in target units

The names below are imported on first use (PEP 562): importing a torch-free part of the
package (scorer.config, scorer.records, reading a run folder) does not import torch.
No name below is also a submodule's name (a lazy name could not tell the two apart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autobuild_dsl.lazy import lazy_names

# name -> the module under autobuild_dsl.scorer that defines it
_HOMES: dict[str, str] = {
    "graph_scores": "embedding_scores",
    "member_weights": "embedding_scores",
    "prediction_doubt": "embedding_scores",
    "FeatureScore": "config",
    "ModelConfig": "config",
    "MemberMetrics": "config",
    "Moments": "config",
    "TrainConfig": "config",
    "EpochProgress": "config",
    "GATv2Layer": "model",
    "GraphBatch": "model",
    "PackedGraphs": "model",
    "ScorerModel": "model",
    "ScorerOutput": "model",
    "feature_importance": "model",
    "pack_graphs": "model",
    "EnsembleConfig": "run",
    "LoadedMember": "run",
    "MemberDone": "run",
    "MemberRecord": "run",
    "RunConfig": "run",
    "RunError": "run",
    "RunMetrics": "run",
    "TrainedRun": "run",
    "default_num_layers": "run",
    "load_run": "run",
    "member_predictions": "run",
    "node_norms": "run",
    "predict": "run",
    "run_feature_importance": "run",
    "summary_json": "run",
    "train_run": "run",
    "available_backend": "softrank",
    "soft_rank": "softrank",
    "soft_spearman": "softrank",
    "train_member": "train",
}


__getattr__ = lazy_names(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if TYPE_CHECKING:
    from autobuild_dsl.scorer.config import (
        EpochProgress,
        FeatureScore,
        MemberMetrics,
        ModelConfig,
        Moments,
        TrainConfig,
    )
    from autobuild_dsl.scorer.embedding_scores import graph_scores, member_weights, prediction_doubt
    from autobuild_dsl.scorer.model import (
        GATv2Layer,
        GraphBatch,
        PackedGraphs,
        ScorerModel,
        ScorerOutput,
        feature_importance,
        pack_graphs,
    )
    from autobuild_dsl.scorer.run import (
        EnsembleConfig,
        LoadedMember,
        MemberDone,
        MemberRecord,
        RunConfig,
        RunError,
        RunMetrics,
        TrainedRun,
        default_num_layers,
        load_run,
        member_predictions,
        node_norms,
        predict,
        run_feature_importance,
        summary_json,
        train_run,
    )
    from autobuild_dsl.scorer.softrank import available_backend, soft_rank, soft_spearman
    from autobuild_dsl.scorer.train import train_member

__all__ = [
    "EnsembleConfig",
    "EpochProgress",
    "FeatureScore",
    "GATv2Layer",
    "GraphBatch",
    "LoadedMember",
    "MemberDone",
    "MemberMetrics",
    "MemberRecord",
    "ModelConfig",
    "Moments",
    "PackedGraphs",
    "RunConfig",
    "RunError",
    "RunMetrics",
    "ScorerModel",
    "ScorerOutput",
    "TrainConfig",
    "TrainedRun",
    "available_backend",
    "default_num_layers",
    "feature_importance",
    "graph_scores",
    "load_run",
    "member_predictions",
    "member_weights",
    "node_norms",
    "pack_graphs",
    "predict",
    "prediction_doubt",
    "run_feature_importance",
    "soft_rank",
    "soft_spearman",
    "summary_json",
    "train_member",
    "train_run",
]
