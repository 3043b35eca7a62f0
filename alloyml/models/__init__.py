"""Linear-architecture language models (linear attention, RetNet, GLA, Mamba, RWKV-style, MoE-Mamba and a
softmax baseline): config, blocks, trainer, recurrent generation, save/load."""
