"""APE with scripted proposer and target: the best instruction is the table's argmax, and every score in
the table matches an independent re-scoring."""

from __future__ import annotations

import pytest

from alloyml.automl.ape import FORWARD_TEMPLATE, ape, clean_instruction
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
        instruction, _, rest = prompt.rpartition("Input: ")  # no instruction: the prompt opens with "Input: "
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
    for prompt in seen:  # a text model sees the user turn, a blank line, then the prefill it continues
        assert prompt.startswith(FORWARD_TEMPLATE.user.split("{count}")[0] + "2 inputs")
        assert prompt.endswith("\n\nThe instruction was to")
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
    assert [r.instruction for r in result.table] == ["", "Reverse the word.", "Repeat the word."]
    assert [r.origin for r in result.table] == ["empty", "given", "proposal"]
    assert [t.metrics["score"] for t in trials] == [0.0, 1.0, 0.0]
    assert result.best_instruction == "Reverse the word."


def test_clean_instruction_and_bad_input():
    assert clean_instruction('  "Instruction: Do it."\nmore') == "Do it."
    with pytest.raises(InvalidInputError):
        ape(_proposer(), _target(), [], DEV)


def test_seed_and_empty_instruction_are_always_candidates():
    """Whatever the proposer writes (the seed verbatim, nothing, or junk), both baselines are in the table once."""
    seed_text = "Reverse the word."
    for answer in [seed_text, "", "   ", "reverse the word.", "Spell the word backwards."]:
        for seed in range(3):
            result = ape(ScriptedLM(lambda p, s, a=answer: a), _target(), DEMOS, DEV, n_proposals=3, n_rounds=1,
                         seed_instructions=[seed_text], seed=seed)
            instructions = [r.instruction for r in result.table]
            assert instructions.count("") == 1 and instructions.count(seed_text) == 1
            assert {r.origin for r in result.table if r.instruction in ("", seed_text)} == {"empty", "given"}
            # APE never returns something worse on dev than either baseline
            assert result.best_score >= max(r.score for r in result.table if r.origin in ("empty", "given"))


class _Recording(ScriptedLM):
    """A scripted LM that keeps the raw prompts (chat messages included) it was sent."""

    def __init__(self, respond):
        super().__init__(respond, name="recording")
        self.raw = []

    def _generate(self, prompts, params):
        self.raw.extend(prompts)
        return super()._generate(prompts, params)


def test_proposals_and_variations_are_prefilled_completions():
    from alloyml.lm import continues_final_message

    proposer = _Recording(lambda p, s: " reverse the letters of the word.")
    result = ape(proposer, _target(), DEMOS, DEV, n_proposals=2, n_rounds=1, n_keep=1, n_variations=1)
    assert len(proposer.raw) == 3
    for prompt in proposer.raw:
        assert continues_final_message(prompt) and prompt[0]["role"] == "user"
    assert [m["content"] for m in proposer.raw[0]][1] == "The instruction was to"
    assert proposer.raw[2][1]["content"] == "New instruction:"
    # the continuation of "The instruction was to" is the instruction itself
    assert "Reverse the letters of the word." in [r.instruction for r in result.table]
    insert = _Recording(lambda p, s: "x")
    ape(insert, _target(), DEMOS, DEV, n_proposals=1, n_rounds=0, proposal_mode="insert")
    user, prefill = insert.raw[0]
    assert "Input: " in user["content"] and prefill["content"].endswith("instructed my friend to")


def _scored_target(score):
    def respond(prompt, s):
        instruction, _, rest = prompt.rpartition("Input: ")
        return _follow(instruction, rest.split("\n")[0])

    return ScriptedLM(respond, name="scored", score=score)


def _lp(prompt: str, continuation: str) -> float:
    """A scripted log-probability: instructions mentioning "letters" make outputs likelier."""
    return -len(continuation) / (2.0 if "letters" in prompt else 1.0) - 0.01 * len(prompt)


def test_accuracy_ties_are_broken_by_logprob():
    ideas = iter(["Repeat the word.", "Repeat the letters."])  # both accuracy 0 on DEV (no palindromes)
    proposer = ScriptedLM(lambda p, s: next(ideas))
    result = ape(proposer, _scored_target(_lp), DEMOS, DEV, n_proposals=2, n_rounds=0)
    for row in result.table:
        expect = sum(_lp(f"{row.instruction}\n\nInput: {ex.input}\nOutput:".lstrip(), " " + ex.output)
                     for ex in DEV) / len(DEV)
        assert row.logprob == pytest.approx(expect)
        assert row.score == 0.0
    assert result.best_instruction == "Repeat the letters."  # first by order would be ""


def test_logprob_scoring_and_targets_without_logprobs():
    result = ape(_proposer(), _scored_target(_lp), DEMOS, DEV, n_proposals=4, n_rounds=0, scoring="logprob",
                 seed=2)
    assert all(r.score == r.logprob for r in result.table)
    assert result.best_score == max(r.logprob for r in result.table)
    called = []
    with pytest.raises(InvalidInputError, match="log-probabilities"):
        ape(ScriptedLM(lambda p, s: called.append(p) or "x"), _target(), DEMOS, DEV, scoring="logprob")
    assert called == []  # refused before any proposal
