"""`alloyml tune merge CONFIG.yaml`: a merge search described by a YAML file, validated whole before any
merge runs.

    template: merge.yaml          # a merge config (mapping, or a file relative to this one)
    metric: mypkg.evals:score     # a function(state_dict) -> float, higher is better
    search: [weight]              # parameters filled in by the search (default: weight)
    layer_groups: 2               # anchors per parameter (mergekit gradient lists)
    n_trials: 24                  # popsize, sigma0, seed, bounds: {weight: [0, 1]}, parallel

The command records the search as a run of kind "tune" (params `search: merge`) with one stored trial per
merge evaluated, as `tune hpo` and `tune inference` do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator

from alloyml.merging.search import DEFAULT_BOUNDS, check_template
from alloyml.refs import import_object, resolve_path
from alloyml.yaml_config import load_yaml_model


class MergeSearchConfig(BaseModel):
    """The arguments of `search_merge`, with the template and the metric named in the file."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    template: dict[str, Any] | Path
    metric: str
    search: list[str] = Field(default_factory=lambda: ["weight"], min_length=1)
    layer_groups: int = Field(4, ge=1)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    n_trials: int = Field(40, ge=1)
    popsize: int | None = Field(None, ge=2)
    sigma0: float = Field(0.25, gt=0, le=1)
    seed: int = 0
    parallel: StrictBool = True

    @field_validator("template", mode="after")
    @classmethod
    def _template_file(cls, value, info: ValidationInfo):
        return resolve_path(value, info) if isinstance(value, Path) else value

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if not callable(import_object(value)):
            raise ValueError(f"{value!r} is not a function of a state dict")
        return value

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in value.items():
            if not lo < hi:
                raise ValueError(f"bounds.{name}: expected low < high, got [{lo}, {hi}]")
        return value

    @model_validator(mode="after")
    def _searchable(self):
        known = {**DEFAULT_BOUNDS, **self.bounds}
        missing = [name for name in self.search if name not in known]
        if missing:
            raise ValueError(f"search {missing}: no default bounds; give them under `bounds`")
        try:  # filled in at the centre of the bounds, the template must be a valid merge config
            self.template = check_template(self.template, self.search, self.layer_groups, self.bounds)[0]
        except ValueError as err:
            raise ValueError(f"template: {err}") from None
        return self

    def build_metric(self) -> Callable[[dict], float]:
        return import_object(self.metric)

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `search_merge` besides the template and the metric."""
        return {"search": tuple(self.search), "layer_groups": self.layer_groups, "bounds": self.bounds or None,
                "n_trials": self.n_trials, "popsize": self.popsize, "sigma0": self.sigma0, "seed": self.seed,
                "parallel": self.parallel}


def load_merge_search_config(source: MergeSearchConfig | dict | str | os.PathLike) -> MergeSearchConfig:
    return load_yaml_model(source, MergeSearchConfig, what="merge search config")
