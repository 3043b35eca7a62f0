"""The cascade plan as JSON: the whole frontier, the chosen point, the scorer and (for serving) how to
build each model. Validated up front by pydantic, so a bad plan fails before any work starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from alloyml.errors import ConfigError, InvalidInputError

PLAN_FORMAT = "alloyml.cascade/1"


class StagePlan(BaseModel):
    """One stage: stop here when the scorer's P(correct) >= threshold; the last stage has none."""

    model: str
    threshold: float | None = None


class PointPlan(BaseModel):
    """One frontier point: a chain of stages and what it achieved on the training data."""

    stages: list[StagePlan] = Field(min_length=1)
    accuracy: float
    mean_cost: float
    cost_se: float | None = None  # standard error of mean_cost over the training queries

    @model_validator(mode="after")
    def _thresholds(self):
        *inner, last = self.stages
        if last.threshold is not None or any(s.threshold is None for s in inner):
            raise ValueError("every stage but the last needs a threshold, and the last has none")
        names = [s.model for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"a chain calls each model at most once, got {names}")
        return self

    @property
    def models(self) -> list[str]:
        return [s.model for s in self.stages]

    @property
    def thresholds(self) -> list[float]:
        return [s.threshold for s in self.stages[:-1]]


class ReplicaPlan(BaseModel):
    """How many Serve replicas run the ingress and each stage: a fixed `num_replicas`, or, when
    `max_replicas` is set, Serve's autoscaling between `num_replicas` and `max_replicas`, aiming at
    `target_ongoing_requests` requests in flight per replica."""

    num_replicas: int = Field(default=1, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    target_ongoing_requests: float = Field(default=32.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _range(self):
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(f"max_replicas={self.max_replicas} is below num_replicas={self.num_replicas}")
        return self

    def deployment_options(self) -> dict:
        """The keyword arguments of `Deployment.options` that give this replica count."""
        if self.max_replicas is None:
            return {"num_replicas": self.num_replicas}
        return {"autoscaling_config": {"min_replicas": self.num_replicas, "initial_replicas": self.num_replicas,
                                       "max_replicas": self.max_replicas,
                                       "target_ongoing_requests": self.target_ongoing_requests}}


class CascadePlan(BaseModel):
    """A fitted cascade: frontier points by increasing cost, the index of the chosen one, the scorer's
    JSON form (`TextScorer.to_dict`), and, for serving, optional model specs (`adapters.build_stage`) and
    replica settings (`ReplicaPlan`)."""

    format: Literal["alloyml.cascade/1"] = PLAN_FORMAT
    models: list[str] = Field(min_length=1)
    frontier: list[PointPlan] = Field(min_length=1)
    chosen: int
    budget: float | None = None
    scorer: dict | None = None
    model_specs: dict[str, dict] = Field(default_factory=dict)
    replicas: ReplicaPlan | None = None  # serving: None is one replica of each deployment

    @model_validator(mode="after")
    def _consistent(self):
        if not 0 <= self.chosen < len(self.frontier):
            raise ValueError(f"chosen={self.chosen} is not an index into {len(self.frontier)} frontier points")
        for point in self.frontier:
            unknown = set(point.models) - set(self.models)
            if unknown:
                raise ValueError(f"frontier uses models {sorted(unknown)} not in models {self.models}")
        costs = [p.mean_cost for p in self.frontier]
        if costs != sorted(costs):
            raise ValueError("frontier points must be sorted by mean_cost")
        unknown = set(self.model_specs) - set(self.models)
        if unknown:
            raise ValueError(f"model_specs name models {sorted(unknown)} not in models {self.models}")
        return self

    @property
    def point(self) -> PointPlan:
        return self.frontier[self.chosen]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CascadePlan:
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"plan file {str(path)!r} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError(f"plan file {str(path)!r} is not JSON: {err}") from err

    @classmethod
    def from_dict(cls, data: dict) -> CascadePlan:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(f"invalid cascade plan: {err}") from err
