"""Training data generated on the fly, fully offline: synthetic tasks and windows of a local text file.

Each task samples `(inputs, targets)`: LongTensors [n, T], with `targets[:, t]` the token that should
follow `inputs[:, :t + 1]` and IGNORE_INDEX (-100) where nothing is scored. `batches(task, batch_size,
seed)` returns `batch(step)`, a pure function of (seed, step): a resumed run sees exactly the batches of
an uninterrupted one, and data-parallel workers can each take their slice of the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.models.config import register_in
from alloyml.models.model import IGNORE_INDEX

TRAINING_TASKS: dict[str, type] = {}
register_task = partial(register_in, TRAINING_TASKS)


def make_task(name: str, **kwargs):
    if name not in TRAINING_TASKS:
        raise InvalidInputError(f"unknown task {name!r}; known: {sorted(TRAINING_TASKS)}")
    return TRAINING_TASKS[name](**kwargs)


def batches(task, batch_size: int, seed: int = 0) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """`batch(step) -> (inputs, targets)` of `batch_size` examples, determined by (seed, step)."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")

    def batch(step: int):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return task.sample(batch_size, generator)

    return batch


def _interleave(a, b):
    """[n, P], [n, P] -> [n, 2P]: a0 b0 a1 b1 ..."""
    return torch.stack([a, b], dim=-1).flatten(1)


@register_task("mqar")
@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (Zoology, Arora et al. 2023): `n_pairs` key-value pairs, then every
    key again in a random order, each followed by its value. Only the values after the queries are scored,
    so chance accuracy is 1 / n_values and chance loss ln(n_values).

    Tokens: 0 unused, keys 1..n_keys, values n_keys + 1..n_keys + n_values.

    seq_len None: the compact layout, sequence length 4 * n_pairs, the queries back to back.
    seq_len given (Zoology's layout, a fixed length for every n_pairs): the 2 * n_pairs context tokens,
    then the query region of seq_len - 2 * n_pairs tokens split into slots of two; each key is queried once,
    in the first token of a slot drawn without replacement with probability proportional to
    slot ** (power_a - 1) (Zoology's power law: short gaps more likely, power_a = 0.01), and the value
    it is bound to is the target there (not in the input). Every other query-region token is a random
    key or value token (Zoology's random non-query tokens), so position alone says nothing."""

    n_pairs: int = 8
    n_keys: int = 32
    n_values: int = 32
    seq_len: int | None = None
    power_a: float = 0.01

    def __post_init__(self):
        if not 1 <= self.n_pairs <= self.n_keys:
            raise InvalidInputError(f"n_pairs must be in [1, n_keys={self.n_keys}], got {self.n_pairs}")
        if self.seq_len is not None and (self.seq_len - 2 * self.n_pairs) // 2 < self.n_pairs:
            raise InvalidInputError(
                f"seq_len must be >= 4 * n_pairs = {4 * self.n_pairs} (a query slot per key), got {self.seq_len}"
            )
        if not 0 < self.power_a <= 1:
            raise InvalidInputError(f"power_a must be in (0, 1], got {self.power_a}")

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_keys + self.n_values

    @property
    def length(self) -> int:
        return 4 * self.n_pairs if self.seq_len is None else self.seq_len

    def sample(self, n: int, generator: torch.Generator):
        P = self.n_pairs
        keys = torch.rand(n, self.n_keys, generator=generator).argsort(-1)[:, :P] + 1  # [n, P] distinct
        values = torch.randint(self.n_values, (n, P), generator=generator) + 1 + self.n_keys
        order = torch.rand(n, P, generator=generator).argsort(-1)
        queries, answers = keys.gather(1, order), values.gather(1, order)
        context = _interleave(keys, values)  # [n, 2P]
        if self.seq_len is None:
            inputs = torch.cat([context, _interleave(queries, answers)], dim=1)  # [n, 4P]
            targets = torch.full_like(inputs, IGNORE_INDEX)
            targets[:, 2 * P :: 2] = answers  # after each query key comes its value
            return inputs, targets
        region = self.seq_len - 2 * P
        slots = region // 2
        weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (self.power_a - 1)
        chosen = torch.multinomial(weights.expand(n, slots), P, replacement=False, generator=generator)
        noise = torch.randint(self.n_keys + self.n_values, (n, region), generator=generator) + 1
        where = 2 * P + 2 * chosen  # [n, P] positions of the query keys
        inputs = torch.cat([context, noise], dim=1).scatter(1, where, queries)
        targets = torch.full_like(inputs, IGNORE_INDEX).scatter(1, where, answers)
        return inputs, targets


@register_task("mixture")
@dataclass(frozen=True)
class Mixture:
    """Examples drawn from several tasks of one vocabulary and one sequence length (Zoology trains MQAR on a
    mix of key-value counts): each example's task is drawn uniformly, and `tasks[i].sample` makes it.
    `tasks`: task objects, or {"name": ..., **kwargs} dicts as `make_task` takes them."""

    tasks: tuple = ()

    def __post_init__(self):
        built = tuple(make_task(**dict(t)) if isinstance(t, dict) else t for t in self.tasks)
        object.__setattr__(self, "tasks", built)
        if not built:
            raise InvalidInputError("a mixture needs at least one task")
        vocabs = {t.vocab_size for t in built}
        if len(vocabs) != 1:
            raise InvalidInputError(f"the mixture's tasks must share one vocab_size, got {sorted(vocabs)}")

    @property
    def vocab_size(self) -> int:
        return self.tasks[0].vocab_size

    def sample(self, n: int, generator: torch.Generator):
        which = torch.randint(len(self.tasks), (n,), generator=generator)
        inputs = targets = None
        for i, task in enumerate(self.tasks):
            rows = (which == i).nonzero().flatten()
            if not len(rows):
                continue
            x, y = task.sample(len(rows), generator)
            if inputs is None:
                inputs = torch.zeros(n, x.shape[1], dtype=torch.long)
                targets = torch.full((n, x.shape[1]), IGNORE_INDEX, dtype=torch.long)
            if x.shape[1] != inputs.shape[1]:
                raise InvalidInputError(
                    f"the mixture's tasks must share one sequence length, got {x.shape[1]} and {inputs.shape[1]}"
                )
            inputs[rows], targets[rows] = x, y
        return inputs, targets


@register_task("selective_copy")
@dataclass(frozen=True)
class SelectiveCopy:
    """Selective copying (Mamba, Gu & Dao 2023): `n_tokens` data tokens scattered among `length` noise
    tokens, then a marker, then the data tokens in order (scored).

    Tokens: 0 noise, 1 marker, data 2..n_symbols + 1; sequence length length + 1 + n_tokens.
    teacher_forcing False: the Mamba paper's layout instead, `n_tokens` markers after the noise region and
    the i-th data token the target at the i-th marker (nothing copied into the input); length
    length + n_tokens. The scored positions are length .. length + n_tokens - 1 in both layouts."""

    length: int = 32
    n_tokens: int = 4
    n_symbols: int = 8
    teacher_forcing: bool = True

    def __post_init__(self):
        if not 1 <= self.n_tokens <= self.length:
            raise InvalidInputError(f"n_tokens must be in [1, length={self.length}], got {self.n_tokens}")

    @property
    def vocab_size(self) -> int:
        return 2 + self.n_symbols

    def sample(self, n: int, generator: torch.Generator):
        data = torch.randint(self.n_symbols, (n, self.n_tokens), generator=generator) + 2
        places = torch.rand(n, self.length, generator=generator).argsort(-1)[:, : self.n_tokens].sort(-1).values
        noise = torch.zeros(n, self.length, dtype=torch.long).scatter(1, places, data)
        if self.teacher_forcing:
            inputs = torch.cat([noise, torch.ones(n, 1, dtype=torch.long), data], dim=1)
        else:
            inputs = torch.cat([noise, torch.ones(n, self.n_tokens, dtype=torch.long)], dim=1)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, self.length : self.length + self.n_tokens] = data  # the marker(s) and each copy predict
        return inputs, targets


@register_task("induction")
@dataclass(frozen=True)
class InductionHeads:
    """Induction heads (Olsson et al. 2022; the Mamba paper's synthetic): `length` random tokens in which a
    trigger token appears once, followed by some token; the sequence ends with the trigger again, and the
    model must predict the token that followed its first occurrence (the only scored position).

    Tokens: 0 trigger, 1..n_symbols ordinary; the first trigger is at a uniform position in
    [0, length - 3], so the recalled token is never the final trigger's neighbour."""

    length: int = 64
    n_symbols: int = 16

    def __post_init__(self):
        if self.length < 3:
            raise InvalidInputError(f"length must be >= 3, got {self.length}")
        if self.n_symbols < 1:
            raise InvalidInputError(f"n_symbols must be >= 1, got {self.n_symbols}")

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_symbols

    def sample(self, n: int, generator: torch.Generator):
        inputs = torch.randint(self.n_symbols, (n, self.length), generator=generator) + 1
        first = torch.randint(self.length - 2, (n, 1), generator=generator)
        inputs.scatter_(1, first, 0)
        inputs[:, -1] = 0
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = inputs.gather(1, first + 1).squeeze(1)
        return inputs, targets


@register_task("arithmetic")
@dataclass(frozen=True)
class Arithmetic:
    """Byte-level sums "a+b=c\\n" with operands below 10 ** digits; the answer and newline are scored.
    Shorter problems are right-padded with spaces (not scored)."""

    digits: int = 2

    vocab_size = 256

    def sample(self, n: int, generator: torch.Generator):
        operands = torch.randint(10**self.digits, (n, 2), generator=generator).tolist()
        width = 4 * self.digits + 4  # "a+b=" is at most 2 * digits + 2 and the answer digits + 2
        inputs = torch.full((n, width), ord(" "), dtype=torch.long)
        targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, (a, b) in enumerate(operands):
            question, answer = f"{a}+{b}=".encode(), f"{a + b}\n".encode()
            text = torch.tensor(list(question + answer))
            inputs[i, : len(text)] = text
            targets[i, len(question) - 1 : len(text) - 1] = text[len(question) :]
        return inputs, targets


@register_task("text_file")
@dataclass(frozen=True)
class TextFile:
    """Random windows of `seq_len` bytes from a local file, every next byte scored."""

    path: str
    seq_len: int = 128

    vocab_size = 256

    def __post_init__(self):
        path = Path(self.path)
        if not path.is_file():
            raise NotFoundError(f"text file {self.path!r} does not exist")
        if path.stat().st_size < self.seq_len + 1:
            raise InvalidInputError(f"{self.path} holds fewer than seq_len + 1 = {self.seq_len + 1} bytes")

    def sample(self, n: int, generator: torch.Generator):
        data = torch.frombuffer(bytearray(Path(self.path).read_bytes()), dtype=torch.uint8)
        starts = torch.randint(len(data) - self.seq_len, (n,), generator=generator)
        windows = torch.stack([data[s : s + self.seq_len + 1] for s in starts.tolist()]).long()
        return windows[:, :-1], windows[:, 1:]
