"""Validated YAML configurations of the `alloyml tune` searches: a Ray Tune hyperparameter search
(`HPOConfig`) and budgeted inference tuning of a language model (`InferenceTuningConfig`).

Each is a pydantic model with unknown keys forbidden, checked whole before any work starts: dotted names
are imported, search-space keys are matched against what the objective accepts, priors against the
space, files must exist. Relative file paths are read from the config file's folder. The models only
describe a search and build its parts (objective, language model, examples); running it and recording
its trials is the caller's job, as everywhere in `alloyml.automl`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from alloyml.automl.inference import InferenceSpace, any_correct, majority_vote
from alloyml.automl.metrics import METRICS
from alloyml.automl.prompting import Example
from alloyml.automl.space import Param, Prior, sample_prior
from alloyml.automl.tasks import PROMPT_TASKS
from alloyml.errors import AlloyError, ConfigError
from alloyml.lm import TOKEN_COUNT, LMSpec, Price
from alloyml.refs import import_object, resolve_path
from alloyml.yaml_config import describe_error, load_yaml_model

# Datasets that ship inside scikit-learn, loaded by `sklearn.datasets.load_<name>` (nothing is downloaded).
SklearnDataset = Literal["breast_cancer", "diabetes", "digits", "iris", "wine"]
UTILITIES = {"majority_vote": majority_vote, "any_correct": any_correct}


def _estimator_class(dotted: str) -> type:
    from sklearn.base import BaseEstimator

    found = import_object(dotted)
    if not (isinstance(found, type) and issubclass(found, BaseEstimator)):
        raise ValueError(f"{dotted!r} is not a scikit-learn estimator class")
    return found


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- hyperparameter search ------------------------------------------------------------------------------------
class SklearnObjectiveSpec(_Spec):
    """A scikit-learn estimator (its class by dotted name, constructed with `params`, after the optional
    `preprocessing` steps as in `make_pipeline`) scored by `cv`-fold cross-validation on a dataset bundled
    with scikit-learn. Space keys are the estimator's `get_params()` names (`logisticregression__C` behind
    preprocessing)."""

    metrics: ClassVar[tuple[str, ...]] = ("score",)
    default_mode: ClassVar[str] = "max"

    kind: Literal["sklearn"]
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: list[str] = Field(default_factory=list)
    dataset: SklearnDataset
    scoring: str | None = None
    cv: int = Field(5, ge=2)

    @field_validator("estimator")
    @classmethod
    def _estimator_imports(cls, value: str) -> str:
        _estimator_class(value)
        return value

    @field_validator("preprocessing")
    @classmethod
    def _steps_import(cls, value: list[str]) -> list[str]:
        for name in value:
            _estimator_class(name)
        return value

    @field_validator("scoring")
    @classmethod
    def _known_scoring(cls, value: str | None) -> str | None:
        from sklearn.metrics import get_scorer, get_scorer_names

        if value is not None:
            try:
                get_scorer(value)
            except ValueError:
                raise ValueError(f"unknown scoring {value!r}; known: {', '.join(get_scorer_names())}") from None
        return value

    @model_validator(mode="after")
    def _params_accepted(self):
        try:
            self.build_estimator()
        except TypeError as err:
            raise ValueError(f"params {sorted(self.params)} do not fit {self.estimator}: {err}") from None
        return self

    @property
    def iterations(self) -> int:
        """Reports per full trial: one per fold."""
        return self.cv

    def build_estimator(self):
        from sklearn.pipeline import make_pipeline

        estimator = _estimator_class(self.estimator)(**self.params)
        steps = [_estimator_class(name)() for name in self.preprocessing]
        return make_pipeline(*steps, estimator) if steps else estimator

    def check_space(self, names: set[str]) -> None:
        accepted = set(self.build_estimator().get_params(deep=True))
        unknown = names - accepted
        if unknown:
            raise ValueError(f"space keys {sorted(unknown)} are not parameters of the estimator; "
                             f"it has {sorted(accepted)}")

    def build(self):
        """The objective, with the dataset loaded."""
        from sklearn import datasets

        from alloyml.automl.objectives import CrossValObjective

        X, y = getattr(datasets, f"load_{self.dataset}")(return_X_y=True)
        return CrossValObjective(self.build_estimator(), X, y, scoring=self.scoring, cv=self.cv)


class LMTrainingObjectiveSpec(_Spec):
    """An alloyml `LinearLM` trained on one of `alloyml.models`' offline tasks (`LMTrainingObjective`).
    Space keys are `ModelConfig` fields or `Trainer` arguments."""

    metrics: ClassVar[tuple[str, ...]] = ("loss", "train_loss")
    default_mode: ClassVar[str] = "min"

    kind: Literal["lm_training"]
    task: str = "mqar"
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    base_model: dict[str, Any] = Field(default_factory=dict)
    steps: int = Field(40, ge=1)
    report_every: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batches: int = Field(2, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _task_and_model_exist(self):
        import dataclasses

        from alloyml.models import ModelConfig, make_task

        try:
            make_task(self.task, **self.task_kwargs)
        except (AlloyError, TypeError) as err:
            raise ValueError(f"task {self.task!r} with task_kwargs {self.task_kwargs}: {err}") from None
        unknown = set(self.base_model) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise ValueError(f"base_model keys {sorted(unknown)} are not ModelConfig fields")
        return self

    @property
    def iterations(self) -> int:
        """Reports per full trial: every `report_every` steps and at the last."""
        return math.ceil(self.steps / self.report_every)

    def check_space(self, names: set[str]) -> None:
        try:
            self.build().split_config(dict.fromkeys(names))
        except AlloyError as err:
            raise ValueError(f"space: {err}") from None

    def build(self):
        from alloyml.automl.objectives import LMTrainingObjective

        return LMTrainingObjective(self.task, **self.model_dump(exclude={"kind", "task"}))


ObjectiveSpec = Annotated[SklearnObjectiveSpec | LMTrainingObjectiveSpec, Field(discriminator="kind")]


class HPOConfig(BaseModel):
    """`alloyml tune hpo`: `num_samples` trials of `objective` over `space` on Ray Tune.

    `metric` / `mode` default to the objective's (`score` / max for sklearn, `loss` / min for LM training).
    `scheduler: asha` stops poor trials after `grace_period` reports (`reduction_factor` per rung); `fifo`
    runs every trial to the end. Warm start: a `prior_fraction` of the trials is drawn from `priors` first.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    objective: ObjectiveSpec
    space: dict[str, Param] = Field(min_length=1)
    priors: dict[str, Prior] = Field(default_factory=dict)
    prior_fraction: float = Field(0.25, ge=0, le=1)
    num_samples: int = Field(8, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    searcher: Literal["optuna", "random"] = "optuna"
    max_concurrent: int = Field(2, ge=1)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self):
        self.objective.check_space(set(self.space))
        for name, prior in self.priors.items():
            if name not in self.space:
                raise ValueError(f"priors.{name}: not a key of the space {sorted(self.space)}")
            try:
                sample_prior({name: self.space[name]}, {name: prior}, 1)  # the centre must lie in the range
            except AlloyError as err:
                raise ValueError(f"priors.{name}: {err}") from None
        self.metric = self.metric or self.objective.metrics[0]
        self.mode = self.mode or self.objective.default_mode
        if self.metric not in self.objective.metrics:
            raise ValueError(f"metric {self.metric!r} is not reported by a {self.objective.kind} objective; "
                             f"it reports {list(self.objective.metrics)}")
        if self.scheduler == "asha" and self.grace_period > self.objective.iterations:
            raise ValueError(f"grace_period {self.grace_period} exceeds the {self.objective.iterations} reports "
                             "of a full trial")
        return self

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `hyperparameter_search` besides the objective and the space."""
        return {
            "max_iterations": self.objective.iterations, "metric": self.metric, "mode": self.mode,
            "num_samples": self.num_samples, "searcher": self.searcher, "asha": self.scheduler == "asha",
            "grace_period": self.grace_period, "reduction_factor": self.reduction_factor,
            "priors": self.priors or None, "prior_fraction": self.prior_fraction,
            "max_concurrent": self.max_concurrent, "seed": self.seed,
        }


# -- inference tuning -----------------------------------------------------------------------------------------
class InferenceTuningConfig(BaseModel):
    """`alloyml tune inference`: the best `space` configuration of `model` on a built-in `task` or a JSONL
    `data` file of {"input", "target"} rows, with mean cost per example <= `budget` (`tune_inference`).

    `instruction` and `metric` default to the task's (for a file: no instruction, exact match);
    `max_examples` keeps the first rows.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    model: LMSpec
    task: str | None = None
    data: Path | None = None
    max_examples: int | None = Field(None, ge=1)
    instruction: str | None = None
    metric: str | None = None
    utility: Literal["majority_vote", "any_correct"] = "majority_vote"
    space: InferenceSpace
    budget: float = Field(gt=0)
    price: Price = TOKEN_COUNT
    initial_examples: int = Field(2, ge=1)
    max_configs: int | None = Field(None, ge=1)
    eta: float | None = Field(None, gt=1)
    seed: int = 0

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str | None) -> str | None:
        if value is not None and value not in PROMPT_TASKS:
            raise ValueError(f"unknown task {value!r}; known: {sorted(PROMPT_TASKS)}")
        return value

    @field_validator("data")
    @classmethod
    def _file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = resolve_path(value, info)
        if not value.is_file():
            raise ValueError(f"data file {value} does not exist")
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in METRICS:
            raise ValueError(f"unknown metric {value!r}; known: {sorted(METRICS)}")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.task is None) == (self.data is None):
            raise ValueError("give exactly one of task (a built-in task) or data (a JSONL file)")
        builtin = PROMPT_TASKS.get(self.task)
        self.instruction = self.instruction if self.instruction is not None else builtin.instruction if builtin else ""
        self.metric = self.metric or (builtin.metric if builtin else "exact")
        return self

    def examples(self) -> list[Example]:
        """The task's examples or the file's rows (each `{"input": str, "target": str}`), first `max_examples`."""
        if self.task is not None:
            rows = list(PROMPT_TASKS[self.task].examples)
        else:
            rows = _read_examples(self.data)
        return rows[: self.max_examples]

    def tune_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `tune_inference` besides the model, the examples and the space."""
        return {
            "budget": self.budget, "instruction": self.instruction, "utility": UTILITIES[self.utility](self.metric),
            "price": self.price, "initial_examples": self.initial_examples,
            "max_configs": self.max_configs, "eta": self.eta, "seed": self.seed,
        }


class _Row(BaseModel):
    input: str
    target: str


def _read_examples(path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _Row.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as err:
            raise ConfigError(f'{path} line {number}: expected a JSON object {{"input": str, "target": str}}: '
                              f"{describe_error(err)}") from None
        examples.append(Example(row.input, row.target))
    if not examples:
        raise ConfigError(f"{path} has no examples")
    return examples


# -- loading -----------------------------------------------------------------------------------------------
Config = TypeVar("Config", HPOConfig, InferenceTuningConfig)


def load_tune_config(path: str | Path, schema: type[Config]) -> Config:
    """Read and validate a YAML config file; ConfigError naming the file, each bad key and what was expected."""
    return load_yaml_model(Path(path), schema, what="tune config")
