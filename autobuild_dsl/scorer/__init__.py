"""AutoBuild scorers: the FE-MLP + GATv2 network with a ranked embedding space, its loss,
training, ensembles and run folders.

    train_run(space, dataset, "acc - 0.5*lat", "RUN/")   # train into a run folder
    run = load_run("RUN/")                                # the trained ensemble
    mean, spread = predict(run, graphs)                   # predictions in target units
"""

from autobuild_dsl.scorer.graph_scores import graph_scores, prediction_doubt
from autobuild_dsl.scorer.model import (
    FeatureScore,
    GATv2Layer,
    GraphBatch,
    ModelConfig,
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
from autobuild_dsl.scorer.train import (
    EpochProgress,
    MemberMetrics,
    Moments,
    TrainConfig,
    train_member,
)

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
