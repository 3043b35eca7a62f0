"""Answer metrics, the built-in task suite and prompt scoring."""

from __future__ import annotations

import pytest

from alloyml.automl.metrics import exact_match, final_word_match, get_metric, normalize
from alloyml.automl.prompting import DEFAULT_TEMPLATE, Example, check_template, evaluate_prompt
from alloyml.automl.tasks import PROMPT_TASKS, get_task
from alloyml.errors import InvalidInputError
from alloyml.lm import ScriptedLM


@pytest.mark.parametrize(
    "prediction,target,exact,final",
    [
        ("Paris", "paris", 1.0, 1.0),
        ('"Paris."\nMore text', "Paris", 1.0, 1.0),
        ("The capital city of France is Paris.", "Paris", 0.0, 1.0),
        ("Positive, clearly", "positive", 0.0, 1.0),
        ("The plural form of the word is 'cats'", "cats", 0.0, 1.0),
        ("cats and dogs", "dogs", 0.0, 1.0),
        ("I think dogs are nice", "dogs", 0.0, 0.0),
        ("", "x", 0.0, 0.0),
    ],
)
def test_metrics(prediction, target, exact, final):
    assert exact_match(prediction, target) == exact
    assert final_word_match(prediction, target) == final
    assert get_metric("final_word") is final_word_match


def test_normalize_and_unknown_metric():
    assert normalize("\n\n  'Hello, World!'  \nsecond") == "hello, world"
    with pytest.raises(InvalidInputError, match="final_word"):
        get_metric("bleu")


def test_task_splits_are_disjoint_and_seeded():
    for task in PROMPT_TASKS.values():
        assert len(task.examples) >= 20 and task.instruction
        demos, dev = task.split(5, n_dev=8, seed=3)
        assert len(demos) == 5 and len(dev) == 8
        assert not {d.input for d in demos} & {d.input for d in dev}
        assert task.split(5, n_dev=8, seed=3) == (demos, dev)
        rest = task.split(5, seed=3)[1]
        assert len(rest) == len(task.examples) - 5
    with pytest.raises(InvalidInputError, match="plural"):
        get_task("nope")
    with pytest.raises(InvalidInputError, match="n_demos"):
        get_task("plural").split(len(get_task("plural").examples))


def _regular_plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def test_every_task_leaves_at_least_30_test_examples_with_checkable_labels():
    for task in PROMPT_TASKS.values():
        _, rest = task.split(5, seed=0)
        test = rest[15:]  # after a dev set of 15
        assert len(test) >= 30, task.name
        assert len({e.input for e in task.examples}) == len(task.examples), task.name
    assert all(e.output == e.input[0] for e in get_task("first_letter").examples)
    assert all(e.output == _regular_plural(e.input) for e in get_task("plural").examples)
    labels = [e.output for e in get_task("sentiment").examples]
    assert set(labels) == {"positive", "negative"} and labels.count("positive") == labels.count("negative")


def test_evaluate_prompt_scores_and_counts_tokens():
    seen = []
    lm = ScriptedLM(lambda p, s: seen.append(p) or p.split("Input: ")[1].split("\n")[0] + "s\nignored")
    examples = [Example("cat", "cats"), Example("box", "boxes"), Example("dog", "dogs")]
    result = evaluate_prompt(lm, "Pluralise.", examples, metric="exact")
    assert seen[0] == DEFAULT_TEMPLATE.format(instruction="Pluralise.", input="cat")
    assert result.scores.tolist() == [1.0, 0.0, 1.0] and result.mean == pytest.approx(2 / 3)
    assert result.outputs == ["cats", "boxs", "dogs"]  # cut at the default stop "\n"
    # prompt "Pluralise . Input : cat Output :" = 7 tokens, answer 1 token
    assert result.tokens.tolist() == [8, 8, 8]
    with pytest.raises(InvalidInputError, match="input"):
        check_template("{instruction} {question}")
