"""Linear-architecture language models (linear attention, RetNet, GLA, Mamba, RWKV-style, MoE-Mamba and a
softmax baseline): config, blocks, trainer, recurrent generation, save/load."""

# Names load on first use (PEP 562), so importing the package does not pull in torch.
_EXPORTS = {
    "ModelConfig": "config", "NAMED_CONFIGS": "config", "named_config": "config",
    "LinearLM": "model", "LMOutput": "model", "IGNORE_INDEX": "model",
    "MIXERS": "mixers", "KVCache": "mixers", "MoE": "moe", "MLP": "moe", "RoutingStats": "moe",
    "save_model": "saving", "load_model": "saving", "load_config": "saving",
    "ByteTokenizer": "tokenizer",
    "TRAINING_TASKS": "data", "MQAR": "data", "SelectiveCopy": "data", "Arithmetic": "data", "TextFile": "data",
    "batches": "data", "make_task": "data",
    "prefill": "generate", "decode": "generate", "sample_next": "generate",
    "Trainer": "trainer", "StepMetrics": "trainer", "CheckpointInfo": "trainer", "list_checkpoints": "trainer",
    "tracin_checkpoints": "trainer", "lr_at": "trainer", "pack_documents": "trainer",
    "train_data_parallel": "distributed", "DistributedResult": "distributed",
    # importing these registers alloyml-linear with transformers' Auto classes
    "AlloyLinearConfig": "hf_bridge", "AlloyLinearForCausalLM": "hf_bridge", "AlloyByteTokenizer": "hf_bridge",
    "save_pretrained": "hf_bridge", "convert_checkpoint": "hf_bridge",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alloyml.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"alloyml.models.{_EXPORTS[name]}"), name)
