"""Tuning: Ray Tune hyperparameter search, prompt search (APE), the DSPy bridge and budgeted inference
tuning (EcoOptiGen-style). A library: every search returns its trials as `TrialRecord`s and hands each
to an optional `on_trial` callback, which the workflow layer records; nothing here touches the store.

Ray, DSPy and torch are imported inside the functions that need them, so importing this package is
cheap.
"""

from alloyml.automl.ape import APEResult, InstructionScore, ape
from alloyml.automl.dspy_bridge import AlloyEngine, DSPyRunResult, dspy_lm, run_dspy_optimizer
from alloyml.automl.hpo import hyperparameter_search
from alloyml.automl.inference import (
    InferenceConfig,
    InferenceSpace,
    InferenceTuningResult,
    any_correct,
    majority_vote,
    tune_inference,
)
from alloyml.automl.metrics import METRICS, get_metric
from alloyml.automl.objectives import CrossValObjective, LMTrainingObjective, SklearnObjective
from alloyml.automl.prompting import DEFAULT_TEMPLATE, Example, PromptScore, evaluate_prompt
from alloyml.automl.space import Choice, IntUniform, Prior, Uniform, sample_prior
from alloyml.automl.tasks import PROMPT_TASKS, Task, get_task
from alloyml.trials import SearchResult, TrialCallback, TrialRecord

__all__ = [
    "APEResult",
    "AlloyEngine",
    "Choice",
    "CrossValObjective",
    "DEFAULT_TEMPLATE",
    "DSPyRunResult",
    "Example",
    "InferenceConfig",
    "InferenceSpace",
    "InferenceTuningResult",
    "InstructionScore",
    "LMTrainingObjective",
    "IntUniform",
    "METRICS",
    "Prior",
    "PromptScore",
    "SearchResult",
    "SklearnObjective",
    "PROMPT_TASKS",
    "Task",
    "TrialCallback",
    "TrialRecord",
    "Uniform",
    "any_correct",
    "ape",
    "dspy_lm",
    "evaluate_prompt",
    "get_metric",
    "get_task",
    "hyperparameter_search",
    "majority_vote",
    "run_dspy_optimizer",
    "sample_prior",
    "tune_inference",
]
