"""`alloyml tune hpo|inference`: the command's answers against independent computations (scikit-learn's
cross_val_score, a brute-force evaluation of every inference configuration), what it records in the store,
and bad configs refused before anything runs or is recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from alloyml.automl.config import HPOConfig, InferenceTuningConfig, load_tune_config
from alloyml.automl.inference import InferenceConfig, InferenceSpace, majority_vote
from alloyml.automl.prompting import Example
from alloyml.cli import main
from alloyml.errors import ConfigError

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

HPO_CONFIG = {
    "objective": {
        "kind": "sklearn",
        "estimator": "sklearn.linear_model.LogisticRegression",
        "params": {"max_iter": 500},
        "preprocessing": ["sklearn.preprocessing.StandardScaler"],
        "dataset": "breast_cancer",
        "scoring": "accuracy",
        "cv": 3,
    },
    "space": {"logisticregression__C": {"kind": "uniform", "low": 1e-3, "high": 100.0, "log": True}},
    "num_samples": 4,
    "seed": 0,
}

WORDS = ["red", "green", "blue", "cyan", "pink", "gold", "gray", "teal"]
INFERENCE_CONFIG = {
    "model": {"kind": "scripted", "respond": "tests.automl._scripted:noisy_echo"},
    "data": "rows.jsonl",  # relative: read next to the config file
    "instruction": "Repeat the last word.",
    "space": {
        "n": [1, 3],
        "temperature": [0.0, 1.0],
        "max_tokens": [2, 12],
        "stop": [[], ["\n"]],
        "templates": ["{input}", "{instruction} {input}"],
    },
    "budget": 7,
}


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _tune_runs():
    from alloyml.platform.client import Platform

    with Platform() as platform:
        return [(run, platform.store.list_trials(run.id)) for run in platform.store.list_runs(kind="tune")]


@pytest.mark.ray
def test_hpo_best_score_is_the_cross_validated_score_and_every_trial_is_recorded(
    ray_session, alloy_home, tmp_path, capsys
):
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = tmp_path / "best.json"
    assert main(["tune", "hpo", str(_write(tmp_path / "hpo.yaml", HPO_CONFIG)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    X, y = load_breast_cancer(return_X_y=True)

    def cv_score(C: float) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=C))
        return float(cross_val_score(model, X, y, cv=3, scoring="accuracy").mean())

    [(run, trials)] = _tune_runs()
    best = json.loads(out.read_text())
    assert best["run_id"] == run.id and (best["metric"], best["mode"]) == ("score", "max")
    assert best["score"] == pytest.approx(cv_score(best["config"]["logisticregression__C"]), rel=1e-12)
    assert f"{best['score']:.4f}" in printed
    # 4 trials, no priors: TPE's startup is max(2, min(10, 4 // 3)) = 2 random trials, said before the trials
    assert printed.index("4 trials: 2 random startup, 2 guided by TPE") < printed.index("[1/4] trial")
    assert "[4/4] trial" in printed
    assert run.status == "done" and (run.params["metric"], run.params["mode"]) == ("score", "max")
    assert run.metrics["best_score"] == best["score"] and run.metrics["best_config"] == best["config"]

    assert len(trials) == 4 and [t.number for t in trials] == [0, 1, 2, 3]
    completed = [t for t in trials if t.status == "completed"]
    assert completed and {t.status for t in trials} <= {"completed", "stopped_early"}
    for t in completed:  # a full trial's score is its 3-fold cross-validated accuracy
        assert t.metrics["score"] == pytest.approx(cv_score(t.config["logisticregression__C"]), rel=1e-12)
    assert best["score"] == max(t.metrics["score"] for t in completed)


def _brute_force(space: InferenceSpace, examples: list[Example], instruction: str, budget: float):
    """Every configuration on every example: the index, utility and mean cost of the best within budget."""
    from alloyml.lm import ScriptedLM
    from tests.automl._scripted import noisy_echo

    lm, utility = ScriptedLM(noisy_echo), majority_vote("exact")
    scored = []
    for i, cfg in enumerate(space.configs()):
        prompts = [cfg.template.format(instruction=instruction, input=ex.input) for ex in examples]
        gens = lm.generate(prompts, **cfg.sampling(), seed=0)
        utilities = [utility(g.texts, ex.output) for g, ex in zip(gens, examples, strict=True)]
        scored.append((float(np.mean(utilities)), float(np.mean([g.total_tokens for g in gens])), i))
    feasible = [s for s in scored if s[1] <= budget]
    best_utility, best_cost, best_index = max(feasible, key=lambda s: (s[0], -s[1], -s[2]))
    # The budget must matter: the best configuration overall costs more than it allows.
    assert max(scored, key=lambda s: (s[0], -s[1]))[1] > budget
    return best_index, best_utility, best_cost


def test_inference_choice_equals_brute_force_and_is_recorded(alloy_home, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"input": f"say {w}", "target": w}) + "\n" for w in WORDS))
    out = tmp_path / "chosen.json"
    assert main(["tune", "inference", str(_write(tmp_path / "inf.yaml", INFERENCE_CONFIG)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    space = InferenceSpace.model_validate(INFERENCE_CONFIG["space"])
    examples = [Example(f"say {w}", w) for w in WORDS]
    index, utility, cost = _brute_force(space, examples, INFERENCE_CONFIG["instruction"], INFERENCE_CONFIG["budget"])
    chosen = json.loads(out.read_text())
    assert chosen["config"] == space.configs()[index].model_dump(mode="json")
    assert chosen["utility"] == utility and chosen["mean_cost"] == cost
    assert f"utility {utility:.4f}" in printed and "completed" in printed

    [(run, trials)] = _tune_runs()
    assert run.status == "done" and run.params["metric"] == "utility" and run.metrics["best_utility"] == utility
    assert len(trials) == len(space.configs())
    assert sum(run.metrics["status_counts"].values()) == len(trials)
    assert run.metrics["status_counts"] == {s: sum(t.status == s for t in trials) for s in {t.status for t in trials}}
    # trials are recorded as they settle (streamed), so find the chosen one by its configuration
    [recorded] = [t for t in trials if t.config == chosen["config"]]
    assert recorded.status == "completed" and recorded.metrics["utility"] == utility


def test_inference_with_nothing_within_budget_exits_1_and_records_why(alloy_home, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"input": "say red", "target": "red"}) + "\n")
    out = tmp_path / "chosen.json"
    config = _write(tmp_path / "inf.yaml", {**INFERENCE_CONFIG, "budget": 1.5})  # every prompt alone is 2+ tokens
    assert main(["tune", "inference", str(config), "--out", str(out)]) == 1
    assert "no configuration fits the budget of 1.5" in capsys.readouterr().out and not out.exists()
    [(run, trials)] = _tune_runs()
    assert run.metrics["best_config"] is None and {t.status for t in trials} == {"pruned_cost"}


def test_inference_on_an_alloyml_checkpoint_matches_the_library_call(alloy_home, tmp_path):
    import torch

    from alloyml.automl import tune_inference
    from alloyml.lm import RecurrentLM
    from alloyml.models import LinearLM, ModelConfig
    from alloyml.models.saving import load_model, save_model

    torch.manual_seed(0)
    save_model(LinearLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, mixer="linear_attn", ffn="none")),
               tmp_path / "tiny")
    config = {"model": {"kind": "alloyml", "path": "tiny"}, "task": "first_letter", "max_examples": 4,
              "space": {"max_tokens": [1, 6], "templates": ["{input}", "{instruction} {input}"]}, "budget": 40}
    out = tmp_path / "chosen.json"
    assert main(["tune", "inference", str(_write(tmp_path / "inf.yaml", config)), "--out", str(out)]) == 0

    from alloyml.automl import get_task

    task = get_task("first_letter")
    space = InferenceSpace.model_validate(config["space"])
    expected = tune_inference(RecurrentLM(load_model(tmp_path / "tiny")), list(task.examples[:4]), space, budget=40,
                              instruction=task.instruction, utility=majority_vote(task.metric))
    chosen = json.loads(out.read_text())
    assert chosen["config"] == expected.best.model_dump(mode="json")
    assert chosen["mean_cost"] == expected.best_cost
    [(_, trials)] = _tune_runs()
    as_json = lambda config: json.dumps(InferenceConfig(**config).model_dump(mode="json"), sort_keys=True)
    assert {as_json(t.config): t.status for t in trials} == {as_json(t.config): t.status for t in expected.trials}
    assert len(trials) == len(expected.trials)


def _bad(base: dict, **changes) -> dict:
    """`base` with dotted keys set (None removes the key)."""
    config = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return config


@pytest.mark.parametrize(
    ("command", "config", "expected"),
    [
        ("hpo", _bad(HPO_CONFIG, num_sample=4), ["num_sample", "unknown key"]),
        ("hpo", _bad(HPO_CONFIG, objective__estimater="x"), ["objective.sklearn.estimater", "unknown key"]),
        ("hpo", _bad(HPO_CONFIG, space={"logisticregression__C": {"kind": "uniform", "low": 10, "high": 1}}),
         ["space.logisticregression__C", "low < high"]),
        ("hpo", _bad(HPO_CONFIG, space={"C": {"kind": "uniform", "low": 1, "high": 10}}),
         ["space keys ['C']", "logisticregression__C"]),
        ("hpo", _bad(HPO_CONFIG, space={"logisticregression__C": {"kind": "normal", "mu": 1}}),
         ["space.logisticregression__C", "normal"]),
        ("hpo", _bad(HPO_CONFIG, objective__estimator="sklearn.linear_model.LogisticRegresion"),
         ["objective.sklearn.estimator", "LogisticRegresion"]),
        ("hpo", _bad(HPO_CONFIG, objective__dataset="mnist"), ["objective.sklearn.dataset", "breast_cancer"]),
        ("hpo", _bad(HPO_CONFIG, priors={"logisticregression__C": {"center": 500.0}}),
         ["priors.logisticregression__C", "outside"]),
        ("hpo", _bad(HPO_CONFIG, metric="loss"), ["metric 'loss'", "score"]),
        ("inference", _bad(INFERENCE_CONFIG, data="missing.jsonl"), ["data", "missing.jsonl", "does not exist"]),
        ("inference", _bad(INFERENCE_CONFIG, data=None, task="plurals"), ["task", "plurals", "plural"]),
        ("inference", _bad(INFERENCE_CONFIG, space__templates=["{question}"]), ["space.templates", "{input}"]),
        ("inference", _bad(INFERENCE_CONFIG, space__beams=[2]), ["space.beams", "unknown key"]),
        ("inference", _bad(INFERENCE_CONFIG, budget=0), ["budget", "greater than 0"]),
        ("inference", _bad(INFERENCE_CONFIG, model={"kind": "scripted", "respond": "tests.automl._scripted:nope"}),
         ["model.scripted.respond", "nope"]),
    ],
)
def test_bad_configs_are_refused_naming_the_input_and_record_nothing(
    command, config, expected, alloy_home, tmp_path, capsys
):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"input": "say red", "target": "red"}) + "\n")
    path = _write(tmp_path / "bad.yaml", config)
    assert main(["tune", command, str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error
    for fragment in expected:
        assert fragment in error, (fragment, error)
    assert _tune_runs() == []


def test_bad_data_rows_name_the_file_and_line(alloy_home, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text('{"input": "say red", "target": "red"}\n{"input": "say blue"}\n')
    assert main(["tune", "inference", str(_write(tmp_path / "inf.yaml", INFERENCE_CONFIG))]) == 2
    error = capsys.readouterr().err
    assert "rows.jsonl line 2" in error and "target" in error
    assert _tune_runs() == []


def test_lm_training_objective_config():
    config = HPOConfig.model_validate({
        "objective": {"kind": "lm_training", "task": "mqar", "steps": 25, "report_every": 10,
                      "base_model": {"n_layers": 1, "mixer": "linear_attn"}},
        "space": {"lr": {"kind": "uniform", "low": 1e-4, "high": 1e-2, "log": True},
                  "d_model": {"kind": "choice", "values": [16, 32]}},
        "scheduler": "fifo",
    })
    kwargs = config.search_kwargs()
    assert (kwargs["metric"], kwargs["mode"], kwargs["asha"]) == ("loss", "min", False)
    assert kwargs["max_iterations"] == math.ceil(25 / 10)  # reports at steps 10, 20 and the last, 25
    with pytest.raises(ValidationError, match="learning_rate"):
        HPOConfig.model_validate({"objective": {"kind": "lm_training"},
                                  "space": {"learning_rate": {"kind": "uniform", "low": 0.1, "high": 1}}})


@pytest.mark.parametrize(
    ("name", "kind"), [("tune_hpo.yaml", HPOConfig), ("tune_inference.yaml", InferenceTuningConfig)]
)
def test_example_configs_are_valid(name, kind):
    config = load_tune_config(EXAMPLES_DIR / name, kind)
    assert isinstance(config, kind)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_tune_config(tmp_path / "nope.yaml", HPOConfig)


@pytest.mark.ray
def test_hpo_resume_runs_only_the_missing_trials(ray_session, alloy_home, tmp_path, capsys):
    first = {**HPO_CONFIG, "num_samples": 3, "scheduler": "fifo"}
    assert main(["tune", "hpo", str(_write(tmp_path / "hpo.yaml", first))]) == 0
    [(old, old_trials)] = _tune_runs()
    capsys.readouterr()

    more = _write(tmp_path / "more.yaml", {**first, "num_samples": 5})
    out = tmp_path / "best.json"
    assert main(["tune", "hpo", str(more), "--resume", str(old.id), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"resuming run {old.id}: 3 trials recorded, 2 to run" in printed
    assert "[4/5] trial" in printed and "[5/5] trial" in printed and "[1/5] trial" not in printed

    [(new, trials)] = [(run, t) for run, t in _tune_runs() if run.id != old.id]
    assert new.params["resumed_from"] == old.id and len(trials) == 5
    assert [(t.config, t.metrics) for t in trials[:3]] == [(t.config, t.metrics) for t in old_trials]
    new_configs = [t.config for t in trials[3:]]
    assert all(c not in [t.config for t in old_trials] for c in new_configs)  # nothing ran twice
    best = json.loads(out.read_text())
    assert best["run_id"] == new.id and best["score"] == max(t.metrics["score"] for t in trials)

    changed = _write(tmp_path / "changed.yaml", {**first, "num_samples": 5, "seed": 1})
    assert main(["tune", "hpo", str(changed), "--resume", str(old.id)]) == 2
    assert "differs from that run's in ['seed']" in capsys.readouterr().err


def test_inference_progress_counts_every_configuration_on_a_terminal(alloy_home, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"input": f"say {w}", "target": w}) + "\n" for w in WORDS))
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr("rich.console.Console", lambda *a, **k: terminal)
    assert main(["tune", "inference", str(_write(tmp_path / "inf.yaml", INFERENCE_CONFIG))]) == 0
    n = len(InferenceSpace.model_validate(INFERENCE_CONFIG["space"]).configs())
    assert f"{n}/{n}" in screen.getvalue()  # the bar reached every configuration
