"""Every language model alloyml uses as a component, behind one interface, built from one spec union.

- `LanguageModel.generate(prompts, n=, temperature=, top_p=, max_tokens=, stop=, seed=)` returns one
  `Generation` (texts, prompt_tokens, completion_tokens) per prompt; tokens are the cost unit. A chat
  prompt ending with an assistant turn is continued (prefill); samples are seeded per (prompt, sample).
- `LanguageModel.logprob(prompt, continuation)` / `logprobs(pairs)`: log P(continuation | prompt) where
  `supports_logprob` (HF, alloyml, scripted with a `score`); otherwise `LogprobUnsupportedError`.
- Models: `ConstantLM` (a stub), `ScriptedLM` (a function of the prompt), `RecurrentLM` (alloyml's own
  `LinearLM`s), `HFCausalLM` / `load_smollm2` / `load_gemma3_270m` (local Hugging Face causal LMs),
  `LiteLLMChat` (remote chat).
- `build_lm(spec)` builds any of them from a validated spec (`LMSpec`: kinds constant, scripted, alloyml,
  hf, smollm2, litellm); routing, automl and the DSPy engine all build models this way.
- `Price(per_call, per_prompt_token, per_completion_token)`: what a call costs, for cascades and budgets.

A library: imports `alloyml.models` and `alloyml.kernels`, never platform, workflows or ui. Heavy libraries
(torch, transformers, litellm) load only when a model that needs them is built or run.
"""

from alloyml.lm.alloy import RecurrentLM
from alloyml.lm.base import (
    Generation,
    LanguageModel,
    LogprobUnsupportedError,
    Message,
    Prompt,
    SamplingParams,
    as_messages,
    as_text,
    continues_final_message,
    cut_at_stop,
    row_seed,
)
from alloyml.lm.constant import ConstantLM
from alloyml.lm.hf import HFCausalLM, load_gemma3_270m, load_smollm2
from alloyml.lm.litellm_chat import LiteLLMChat, LiteLLMSpec
from alloyml.lm.price import TOKEN_COUNT, Price
from alloyml.lm.scripted import Sample, ScriptedLM, word_tokens
from alloyml.lm.specs import (
    KINDS,
    AlloySpec,
    ConstantSpec,
    Gemma3Spec,
    HFSpec,
    LMSpec,
    ModelLike,
    ScriptedSpec,
    SmolLM2Spec,
    as_lm,
    build_lm,
    parse_lm_spec,
)

__all__ = [
    "KINDS",
    "TOKEN_COUNT",
    "AlloySpec",
    "ConstantLM",
    "ConstantSpec",
    "Generation",
    "HFCausalLM",
    "HFSpec",
    "LMSpec",
    "LanguageModel",
    "LiteLLMChat",
    "LiteLLMSpec",
    "LogprobUnsupportedError",
    "Message",
    "ModelLike",
    "Price",
    "Prompt",
    "RecurrentLM",
    "Sample",
    "SamplingParams",
    "ScriptedLM",
    "ScriptedSpec",
    "Gemma3Spec",
    "SmolLM2Spec",
    "as_lm",
    "as_messages",
    "as_text",
    "build_lm",
    "continues_final_message",
    "cut_at_stop",
    "load_gemma3_270m",
    "load_smollm2",
    "parse_lm_spec",
    "row_seed",
    "word_tokens",
]
