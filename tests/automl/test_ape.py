"""APE with scripted proposer and target: the best instruction is the table's argmax, and every score in
the table matches an independent re-scoring."""

from __future__ import annotations

import pytest

from alloyml.automl.ape import PROPOSE_TEMPLATE, ape, clean_instruction
from alloyml.automl.prompting import Example
from alloyml.errors import InvalidInputError
from alloyml.lm import ScriptedLM

WORDS = ["stone", "river", "cloud", "apple", "banana", "tiger", "orange", "lemon"]
DEMOS = [Example(w, w[::-1]) for w in WORDS[:5]]
DEV = [Example(w, w[::-1]) for w in WORDS[3:]]
IDEAS = ["Write the word in upper case.", "Repeat the word.", "Spell the word backwards.", "Reverse it"]


def _proposer():
    def respond(prompt, s):
        if prompt.startswith("Generate a variation"):
            parent = prompt.split("Instruction: ")[1].split("\n")[0]
            return f'"{parent} Reverse the letters."\nextra line' if s.rng.random() < 0.5 else parent
        return IDEAS[int(s.rng.integers(len(IDEAS)))]

    return ScriptedLM(respond, name="proposer")


def _follow(instruction: str, word: str) -> str:
    """The target's behaviour: the first rule whose keyword appears in the instruction."""
    text = instruction.lower()
    if "upper" in text:
        return word.upper()
    if "backwards" in text:
        return word[::-1] if len(word) % 2 else word  # right on odd-length words only
    if "reverse" in text:
        return word[::-1]
    return word


def _target():
    def respond(prompt, s):
        instruction, rest = prompt.split("\n\nInput: ")
        return _follow(instruction, rest.split("\n")[0])

    return ScriptedLM(respond, name="target")


def test_ape_best_is_argmax_and_scores_are_exact():
    result = ape(_proposer(), _target(), DEMOS, DEV, n_proposals=6, n_rounds=2, n_keep=2, n_variations=2, seed=1)
    for row in result.table:  # independent re-scoring of every candidate
        truth = sum(_follow(row.instruction, ex.input) == ex.output for ex in DEV) / len(DEV)
        assert row.score == pytest.approx(truth), row
    assert result.best_score == max(r.score for r in result.table)
    assert result.best_instruction == next(r.instruction for r in result.table if r.score == result.best_score)
    assert result.best_score == 1.0 and "reverse" in result.best_instruction.lower()
    assert len({r.instruction for r in result.table}) == len(result.table)
    variations = [r for r in result.table if r.round > 0]
    assert variations and all(v.origin in {r.instruction for r in result.table} for v in variations)
    assert result.target_tokens == sum(r.tokens for r in result.table) > 0 and result.proposer_tokens > 0


def test_proposal_prompts_carry_demonstrations():
    seen = []
    proposer = ScriptedLM(lambda p, s: seen.append(p) or "Reverse the word.")
    ape(proposer, _target(), DEMOS, DEV, n_proposals=3, demos_per_proposal=2, n_rounds=0)
    assert len(seen) == 3
    for prompt in seen:
        assert prompt.startswith(PROPOSE_TEMPLATE.split("{demos}")[0])
        assert sum(f"Input: {d.input}\nOutput: {d.output}" in prompt for d in DEMOS) == 2


def test_seed_instructions_are_scored_and_callback_sees_each_trial():
    trials = []
    result = ape(
        ScriptedLM(lambda p, s: "Repeat the word."),
        _target(),
        DEMOS,
        DEV,
        n_proposals=2,
        n_rounds=0,
        seed_instructions=["Reverse the word."],
        on_trial=trials.append,
    )
    assert [r.instruction for r in result.table] == ["Reverse the word.", "Repeat the word."]
    assert [t.metrics["score"] for t in trials] == [1.0, 0.0]
    assert result.best_instruction == "Reverse the word."


def test_clean_instruction_and_bad_input():
    assert clean_instruction('  "Instruction: Do it."\nmore') == "Do it."
    with pytest.raises(InvalidInputError):
        ape(_proposer(), _target(), [], DEV)
