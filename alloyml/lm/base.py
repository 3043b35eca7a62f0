"""The language-model interface shared by automl and routing.

A `LanguageModel` turns a batch of prompts into one `Generation` per prompt. Token counts are the cost
unit everywhere (budgeted tuning, cascades): `prompt_tokens` is charged once per prompt and
`completion_tokens` sums over the `n` samples, as remote chat APIs bill them.

A prompt is either plain text (sent as one user turn to chat models) or a list of chat messages
`{"role": ..., "content": ...}`. A chat prompt whose last message is an `assistant` turn is a *prefill*:
the model continues that message instead of opening a fresh reply (`continues_final_message`), which is
how a completion-style template ("...The instruction was to") reaches a chat model.

`logprob(prompt, continuation)` scores a continuation: the summed log-probability of its tokens after the
prompt (rendered as `generate` renders it). Models that cannot score say so with `supports_logprob`;
asking one anyway raises `LogprobUnsupportedError`.

Sampling is seeded per (prompt, sample): a sample's text depends on the seed, the prompt and its index,
never on which other prompts share the call (`row_seed`), so searches that evaluate a configuration in
chunks see what one call over every example would return.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alloyml.errors import AlloyError, InvalidInputError

Message = Mapping[str, str]
Prompt = str | Sequence[Message]

_ROLES = ("system", "user", "assistant")


class LogprobUnsupportedError(AlloyError, NotImplementedError):
    """The model (e.g. a chat endpoint without logprobs) cannot score a continuation."""


def row_seed(seed: int, text: str, index: int) -> int:
    """The seed of sample `index` of the prompt rendered as `text`: a 63-bit hash of all three, so samples
    are independent of one another and of the batch they are drawn in."""
    digest = hashlib.sha256(f"{int(seed)}\0{int(index)}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def continues_final_message(prompt: Prompt) -> bool:
    """Whether the prompt is a prefill: a chat prompt ending with an assistant turn to continue."""
    return not isinstance(prompt, str) and bool(prompt) and prompt[-1].get("role") == "assistant"


@dataclass(frozen=True)
class Generation:
    """The `n` sampled completions of one prompt and what they cost in tokens."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def text(self) -> str:
        """The first completion (the only one when `n == 1`)."""
        return self.texts[0]


@dataclass(frozen=True)
class SamplingParams:
    """Validated decoding settings of one `generate` call."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 1:
            raise InvalidInputError(f"n must be an integer >= 1, got {self.n!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidInputError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidInputError(f"stop must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as chat messages; plain text becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    for i, m in enumerate(messages):
        if m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise InvalidInputError(
                f"prompt message {i} must be {{'role': one of {_ROLES}, 'content': str}}, got {m!r}"
            )
    if not messages:
        raise InvalidInputError("a chat prompt needs at least one message")
    return messages


def as_text(prompt: Prompt) -> str:
    """The prompt as plain text, for models without a chat template: turns joined by blank lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in as_messages(prompt))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class LanguageModel(abc.ABC):
    """Anything that completes prompts and counts tokens.

    Subclasses implement `_generate` on validated `SamplingParams` and `count_tokens`; `generate` is the
    public entry point. `count_tokens(prompt)` must equal the `prompt_tokens` that `generate` reports
    for that prompt: budgeted tuning uses it as a lower bound on cost before calling the model.
    """

    name: str = "lm"

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Generation]:
        """One `Generation` per prompt, each with `n` texts, cut before the first stop string."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise InvalidInputError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        for p in prompts:
            if not isinstance(p, str):
                as_messages(p)
        params = SamplingParams(n, float(temperature), float(top_p), max_tokens, tuple(stop or ()), seed)
        if not prompts:
            return []
        return self._generate(list(prompts), params)

    supports_logprob: bool = False

    def fingerprint(self) -> str:
        """A short hash of what determines this model's answers (weights, code, endpoint), for cache keys:
        a changed model under the same name gets a different fingerprint."""
        digest = hashlib.sha256(f"{type(self).__module__}.{type(self).__qualname__}\0{self.name}".encode())
        for part in self._fingerprint_parts():
            digest.update(b"\0" + part)
        return digest.hexdigest()[:16]

    def _fingerprint_parts(self) -> list[bytes]:
        """Bytes that identify the model beyond its class and name; subclasses add their weights or code."""
        return []

    def logprob(self, prompt: Prompt, continuation: str) -> float:
        """log P(continuation | prompt), summed over the continuation's tokens (0.0 when it is empty)."""
        return self.logprobs([(prompt, continuation)])[0]

    def logprobs(self, pairs: Sequence[tuple[Prompt, str]]) -> list[float]:
        """`logprob` of each (prompt, continuation) pair, batched where the model can."""
        if not self.supports_logprob:
            raise LogprobUnsupportedError(f"model {self.name!r} ({type(self).__name__}) gives no log-probabilities")
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], str)):
                raise InvalidInputError(f"logprobs pair {i} must be (prompt, continuation str), got {pair!r}")
            if not isinstance(pair[0], str):
                as_messages(pair[0])
        return self._logprobs(pairs) if pairs else []

    def _logprobs(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        raise LogprobUnsupportedError(f"model {self.name!r} ({type(self).__name__}) gives no log-probabilities")

    @abc.abstractmethod
    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        """Complete validated prompts."""

    @abc.abstractmethod
    def count_tokens(self, prompt: Prompt) -> int:
        """Prompt tokens `generate` will charge for `prompt` (after any chat template)."""


def module_fingerprint_parts(module) -> list[bytes]:
    """Every parameter and buffer of a torch module, by name, as bytes (for `fingerprint`)."""
    import torch

    parts = []
    for key, tensor in module.state_dict().items():
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        parts += [key.encode(), raw.numpy().tobytes()]
    return parts
