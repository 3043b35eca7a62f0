"""Data valuation: which training rows help and which hurt (Shapley family, KNN-Shapley, Data-OOB,
pipeline-aware values (row-wise pipelines, joins and forks), TracIn and influence functions). A library:
arrays and estimators in, result dataclasses out; it never touches the store.

Parts: a `Utility` (model + data + scorer) or a closed-form game; a `Semivalue` weight (Shapley, Banzhaf,
Beta); a `Sampler` (permutations, sizes, MSR); a `Stopping` criterion (combine with & and |).
"""

from alloyml.valuation.classwise import ClasswiseUtility, classwise_shapley, exact_classwise_shapley
from alloyml.valuation.datamodeling import LDSResult, linear_datamodeling_score, random_subsets
from alloyml.valuation.evaluation import flip_labels, noisy_label_detection, point_removal_curve
from alloyml.valuation.games import AdditiveGame, AirportGame, VotingGame
from alloyml.valuation.grouptesting import group_testing_samples, group_testing_shapley
from alloyml.valuation.knn import knn_shapley
from alloyml.valuation.leastcore import least_core
from alloyml.valuation.methods import (
    beta_shapley,
    exact_banzhaf,
    exact_semivalues,
    exact_shapley,
    leave_one_out,
    msr_banzhaf,
    sampled_semivalues,
    tmc_shapley,
)
from alloyml.valuation.oob import data_oob
from alloyml.valuation.pipeline import check_rowwise, pipeline_knn_shapley, pipeline_utility
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.samplers import (
    AntitheticPermutationSampler,
    MSRSampler,
    OwenSampler,
    PermutationSampler,
    SizeSampler,
    StratifiedSampler,
)
from alloyml.valuation.semivalues import Banzhaf, Beta, Semivalue, Shapley, get_semivalue, register_semivalue
from alloyml.valuation.sources import (
    KNNUtility,
    NotExactError,
    Provenance,
    SourceUtility,
    aggregate_to_sources,
    exact_source_semivalues,
    fork_provenance,
    knn_source_shapley,
    merge_with_provenance,
)
from alloyml.valuation.stopping import (
    MaxEvaluations,
    MaxSamples,
    MaxTime,
    MinUpdates,
    RankStability,
    StandardErrorThreshold,
)
from alloyml.valuation.utility import Utility

__all__ = [
    "KNNUtility", "NotExactError", "Provenance", "knn_source_shapley", "SourceUtility", "aggregate_to_sources",
    "exact_source_semivalues",
    "fork_provenance", "merge_with_provenance",
    "LDSResult", "linear_datamodeling_score", "random_subsets",
    "ClasswiseUtility", "group_testing_samples", "group_testing_shapley", "classwise_shapley",
    "exact_classwise_shapley",
    "AdditiveGame", "AirportGame", "AntitheticPermutationSampler", "OwenSampler", "least_core",
    "Banzhaf", "Beta", "MSRSampler", "MaxEvaluations", "MaxSamples", "MaxTime",
    "MinUpdates", "PermutationSampler", "RankStability", "Semivalue", "Shapley", "SizeSampler", "StratifiedSampler",
    "StandardErrorThreshold",
    "Utility", "ValuationResult", "VotingGame", "beta_shapley", "check_rowwise", "data_oob", "exact_banzhaf",
    "exact_semivalues", "exact_shapley", "flip_labels", "get_semivalue", "knn_shapley", "leave_one_out",
    "msr_banzhaf", "noisy_label_detection", "pipeline_knn_shapley", "pipeline_utility", "point_removal_curve",
    "register_semivalue",
    "sampled_semivalues", "tmc_shapley",
]
