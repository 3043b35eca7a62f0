"""Search-space parameters and user priors over them (where good values are believed to lie).

A parameter is a pydantic model (`Uniform`, `IntUniform`, `Choice`); `to_tune` turns it into a Ray
Tune domain. A `Prior` states where the user believes good values lie: a centre and a width (a
fraction of the range, in log space for log-scaled parameters), or for a `Choice` a favoured value and
the probability of picking it. `sample_prior` draws configurations from those beliefs; parameters
without a prior are drawn uniformly.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from alloyml.errors import InvalidInputError


class Uniform(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["uniform"] = "uniform"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"need low < high (and low > 0 when log), got {self.low}, {self.high}")
        return self


class IntUniform(Uniform):
    """Integers in [low, high], both inclusive."""

    kind: Literal["int"] = "int"  # type: ignore[assignment]


class Choice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)


Param = Annotated[Uniform | IntUniform | Choice, Field(discriminator="kind")]
_SPACE = TypeAdapter(dict[str, Param])


class Prior(BaseModel):
    """Where good values lie: `center` with `width` (a fraction of the range), or a favoured choice
    picked with probability `confidence` (the other choices share the rest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    center: Any
    width: float = Field(0.1, gt=0)
    confidence: float = Field(0.7, ge=0, le=1)


def parse_space(space: dict) -> dict[str, Uniform | IntUniform | Choice]:
    """Validate a space given as parameter models or plain dicts (`{"kind": "uniform", ...}`)."""
    if not isinstance(space, dict) or not space:
        raise InvalidInputError("space must be a non-empty dict of parameter name -> Uniform/IntUniform/Choice")
    plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in space.items()}
    return _SPACE.validate_python(plain)


def to_tune(param: Uniform | IntUniform | Choice):
    from ray import tune

    if isinstance(param, Choice):
        return tune.choice(param.values)
    if isinstance(param, IntUniform):
        low, high = int(param.low), int(param.high)
        return tune.lograndint(low, high + 1) if param.log else tune.randint(low, high + 1)
    return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)


def _sample_one(param, prior: Prior | None, rng: np.random.Generator):
    if isinstance(param, Choice):
        if prior is not None and prior.center in param.values and rng.random() < prior.confidence:
            return prior.center
        others = [v for v in param.values if prior is None or v != prior.center] or param.values
        return others[int(rng.integers(len(others)))]
    warp = math.log if param.log else float
    unwarp = math.exp if param.log else float
    low, high = warp(param.low), warp(param.high)
    if prior is None:
        value = unwarp(rng.uniform(low, high))
    else:
        centre = warp(float(prior.center))
        if not low <= centre <= high:
            raise InvalidInputError(f"prior centre {prior.center} lies outside [{param.low}, {param.high}]")
        value = unwarp(float(np.clip(rng.normal(centre, prior.width * (high - low)), low, high)))
    if isinstance(param, IntUniform):
        return int(np.clip(round(value), param.low, param.high))
    return float(np.clip(value, param.low, param.high))


def sample_prior(space: dict, priors: dict[str, Prior], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` configurations drawn from the user's priors (uniform where a parameter has none)."""
    space = parse_space(space)
    unknown = set(priors) - set(space)
    if unknown:
        raise InvalidInputError(f"priors name parameters not in the space: {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    return [{name: _sample_one(p, priors.get(name), rng) for name, p in space.items()} for _ in range(count)]
