"""Scripted response functions that YAML configs name by dotted path (`model: {kind: scripted, respond: ...}`)."""


def noisy_echo(prompt: str, sample) -> str:
    """The prompt's last word (only on a coin flip when the prompt has no "Repeat" instruction; replaced by
    "wrong" with probability 0.4 x temperature), then a line of 0-8 filler words, so utility depends on the
    template and temperature, and cost on the template, max_tokens and stop."""
    answer = prompt.split()[-1]
    if "Repeat" not in prompt and sample.rng.random() < 0.5:
        answer = "maybe"
    if sample.rng.random() < 0.4 * sample.temperature:
        answer = "wrong"
    return answer + "\n" + " ".join(["la"] * int(sample.rng.integers(0, 9)))
