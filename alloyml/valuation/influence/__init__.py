"""Gradient-based data values for torch models: TracInCP (Pruthi et al. 2020), self-influence, and
influence functions with inverse-Hessian-vector products by conjugate gradient or LiSSA, or the EK-FAC inverse of
the empirical Fisher of linear layers (`ekfac.py`).

All share one gradient machinery (`gradients.py`): per-example gradients batched with `torch.func`
(grad + vmap), restricted to chosen layers, optionally randomly projected (TRAK-style) to a fixed
dimension. Results are `InfluenceScores` (train × test matrices) or the package-wide `ValuationResult`.
"""

from alloyml.valuation.influence.ekfac import EKFAC, ekfac_influence
from alloyml.valuation.influence.gradients import GradientFeaturizer, select_parameters
from alloyml.valuation.influence.ihvp import conjugate_gradient, influence_functions, lissa
from alloyml.valuation.influence.losses import sequence_loss
from alloyml.valuation.influence.tracin import InfluenceScores, TrainingCheckpoint, self_influence, tracin

__all__ = [
    "EKFAC", "ekfac_influence",
    "TrainingCheckpoint", "GradientFeaturizer", "InfluenceScores", "conjugate_gradient", "influence_functions", "lissa",
    "select_parameters", "self_influence", "sequence_loss", "tracin",
]
