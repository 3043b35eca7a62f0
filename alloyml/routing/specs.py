"""Model specs checked when a plan is saved: each is built once, so a spec that cannot be built (an
unknown kind, a wrong parameter, a model folder that does not exist) fails `cascade fit --models`
naming its stage, instead of failing a deploy later."""

from __future__ import annotations

from alloyml.errors import ConfigError


def check_model_specs(specs: dict[str, dict]) -> None:
    """Build every spec with the adapters' builder; ConfigError naming the first stage that fails."""
    from alloyml.routing.adapters import build_stage

    for name, spec in specs.items():
        try:
            build_stage(name, spec)
        except ConfigError as err:
            raise ConfigError(f"model spec of stage {name!r} is invalid: {err}") from err
        except Exception as err:  # noqa: BLE001  whatever the model's loader raises, name the stage
            raise ConfigError(f"model spec of stage {name!r} cannot be built: {type(err).__name__}: {err}") from err
