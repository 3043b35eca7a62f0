"""What one call to a language model costs: the price type of cascades (routing) and budgeted tuning (automl).

A call costs `per_call + per_prompt_token * prompt_tokens + per_completion_token * completion_tokens`, in
whatever unit the user budgets in (dollars, or tokens with `TOKEN_COUNT`). Unset rates are 0.

Stored plans and configs written before this type existed name the rates differently; they still load:
routing's `cost_per_call` / `cost_per_token` (one rate for prompt and completion tokens alike) and automl's
`prompt` / `completion` (where an unset partner meant 1, as it did then).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alloyml.errors import InvalidInputError

Rate = Field(0.0, ge=0, allow_inf_nan=False)

_OLD_TOKEN_DEFAULT = 1.0  # automl's TokenPrice priced each token at 1 unless told otherwise


class Price(BaseModel):
    """Per-call and per-token rates, each finite and >= 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_call: float = Rate
    per_prompt_token: float = Rate
    per_completion_token: float = Rate

    def __init__(self, **rates: Any):
        # Built from Python or a stored mapping, a bad rate is the caller's input error; nested in a
        # config, pydantic reports it with the config's other problems instead.
        try:
            super().__init__(**rates)
        except ValidationError as err:
            from alloyml.yaml_config import validation_problems

            raise InvalidInputError(f"price: {validation_problems(err)}") from None

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        renamed: dict[str, Any] = {}
        if "cost_per_call" in data:
            renamed["per_call"] = data.pop("cost_per_call")
        if "cost_per_token" in data:
            rate = data.pop("cost_per_token")
            renamed["per_prompt_token"] = renamed["per_completion_token"] = rate
        if "prompt" in data or "completion" in data:
            renamed["per_prompt_token"] = data.pop("prompt", _OLD_TOKEN_DEFAULT)
            renamed["per_completion_token"] = data.pop("completion", _OLD_TOKEN_DEFAULT)
        clash = sorted(set(renamed) & set(data))
        if clash:
            raise ValueError(f"give {clash} once: an old name and its new name are both set")
        return data | renamed

    def cost(self, prompt_tokens: int | float, completion_tokens: int | float, calls: int = 1) -> float:
        """Cost of `calls` calls that used these many tokens in all."""
        for name, count in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens),
                            ("calls", calls)):
            if not (math.isfinite(count) and count >= 0):
                raise InvalidInputError(f"{name} must be a finite count >= 0, got {count!r}")
        tokens = self.per_prompt_token * prompt_tokens + self.per_completion_token * completion_tokens
        return self.per_call * calls + tokens


TOKEN_COUNT = Price(per_prompt_token=1.0, per_completion_token=1.0)
"""Every token costs 1: cost is the number of tokens (budgeted tuning's default)."""
