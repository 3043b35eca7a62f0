"""mergekit architecture definitions for alloyml models, so mergekit merges them tensor by tensor.

mergekit finds an architecture by the `architectures` name in config.json (`AlloyLinearForCausalLM`,
written by `hf_bridge.save_pretrained`) in its table of JSON definitions. alloyml's families differ in
their layer tensors (each mixer has its own projections, the feed-forward is an MLP, an MoE of n_experts
or nothing), so one fixed JSON file cannot list them; `definition(config)` writes the JSON definition of
one family, read from a model of that config built on the meta device (no memory, no weights), and
`AlloyArchitecture` gives mergekit the same names for whichever family a config describes.

mergekit has no plugin hook: its table is filled from its own package data at import. `register()` adds
alloyml's entry to that table in this process (and registers the Hugging Face config with transformers,
which mergekit uses to read config.json). `alloyml merge --backend mergekit` calls it; for mergekit's own
command line, `python -m alloyml.models.mergekit_arch CONFIG.yaml OUT [mergekit-yaml options]` is
`mergekit-yaml` with the registration done first.
"""

from __future__ import annotations

import json
import sys

from alloyml.models.saving import HF_MODEL_TYPE

ARCHITECTURE_NAME = "AlloyLinearForCausalLM"
_PRE = ("embed.weight",)
_POST = ("norm.weight", "lm_head.weight")
_VOCAB_AXIS = {"embed.weight": 0, "lm_head.weight": 0}


def layer_tensor_names(model_config) -> list[str]:
    """Names of block 0's tensors with the index as mergekit's `${layer_index}` placeholder, read from a
    meta-device model of `model_config` (an alloyml ModelConfig) so they are the names that model saves."""
    import torch

    from alloyml.models.model import Block

    with torch.device("meta"):
        block = Block(model_config)
    return [f"blocks.${{layer_index}}.{name}" for name in block.state_dict()]


def definition(model_config) -> dict:
    """mergekit's JSON architecture definition (the format of mergekit/_data/architectures/*.json) for the
    family of `model_config`."""
    def weight(name):
        return {"name": name, **({"vocabulary_axis": _VOCAB_AXIS[name]} if name in _VOCAB_AXIS else {})}

    return {
        "model_type": HF_MODEL_TYPE,
        "architectures": [ARCHITECTURE_NAME],
        "pre_weights": [weight(n) for n in _PRE],
        "post_weights": [weight(n) for n in _POST],
        "num_layers_config_key": "n_layers",
        "layer_templates": {"weights": [{"name": n} for n in layer_tensor_names(model_config)]},
    }


def _architecture():
    """The mergekit `ModelArchitecture` whose tensors follow each config's family."""
    from mergekit.architecture import ModelArchitecture, ModuleArchitecture, ModuleDefinition, WeightInfo

    from alloyml.models.saving import config_from_hf

    class AlloyArchitecture(ModuleArchitecture):
        def _family(self, config):
            # Built from each config's JSON (`to_dict`), so it sees exactly what config.json says.
            return definition(config_from_hf(config.to_dict()))

        def pre_weights(self, config):
            return [WeightInfo(**w) for w in self._family(config)["pre_weights"]]

        def post_weights(self, config):
            return [WeightInfo(**w) for w in self._family(config)["post_weights"]]

        def layer_weights(self, index, config):
            names = self._family(config)["layer_templates"]["weights"]
            return [WeightInfo(name=w["name"].replace("${layer_index}", str(index))) for w in names]

        def num_layers_config_key(self):
            return "n_layers"

    return ModelArchitecture(
        modules={"default": ModuleDefinition(architecture=AlloyArchitecture())},
        architectures=[ARCHITECTURE_NAME],
        model_type=HF_MODEL_TYPE,
    )


def register() -> None:
    """Make mergekit (in this process) know alloyml models; idempotent."""
    from mergekit.architecture.json_definitions import NAME_TO_ARCH

    import alloyml.models.hf_bridge  # noqa: F401  (registers the config with transformers' AutoConfig)

    if ARCHITECTURE_NAME not in NAME_TO_ARCH:
        NAME_TO_ARCH[ARCHITECTURE_NAME] = [_architecture()]


def main(argv: list[str] | None = None) -> None:
    """`mergekit-yaml` with alloyml's architecture registered (same arguments)."""
    register()
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    mergekit_yaml(args=list(sys.argv[1:] if argv is None else argv), prog_name="mergekit-yaml")


def dump(model_config) -> str:
    """`definition` as the JSON text of a mergekit architecture file."""
    return json.dumps(definition(model_config), indent=4) + "\n"


if __name__ == "__main__":
    main()
