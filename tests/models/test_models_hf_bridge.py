"""alloyml models through transformers: the Auto classes load a saved folder, and forward logits and
`generate()` ids equal alloyml's own forward and `generate.prefill`/`decode`, for every mixer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.models import LinearLM, ModelConfig, decode, load_model, prefill, save_model
from alloyml.models.mixers import MIXERS

MIXER_NAMES = sorted(MIXERS)


def _tiny(mixer: str, seed: int = 0, **overrides) -> LinearLM:
    torch.manual_seed(seed)
    cfg = ModelConfig.named(mixer, **{"d_model": 32, "n_layers": 2, "n_heads": 2, **overrides})
    return LinearLM(cfg).eval()


def _ours(model, prompts, max_tokens):
    logits, states = prefill(model, prompts)
    return decode(model, logits, states, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """mixer -> (alloyml model, folder written by hf_bridge.save_pretrained)."""
    from alloyml.models.hf_bridge import save_pretrained

    out = {}
    for i, mixer in enumerate(MIXER_NAMES):
        model = _tiny(mixer, seed=i)
        out[mixer] = (model, save_pretrained(model, tmp_path_factory.mktemp(mixer)))
    return out


def test_importing_alloyml_does_not_import_transformers_or_torch():
    code = "import sys, alloyml, alloyml.models; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_registration_happens_on_importing_the_bridge():
    code = (
        "from transformers import AutoConfig\n"
        "try:\n    AutoConfig.for_model('alloyml-linear'); print('known')\nexcept ValueError:\n    print('unknown')\n"
        "import alloyml.models.hf_bridge\n"
        "print(type(AutoConfig.for_model('alloyml-linear', mixer='gla')).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["unknown", "AlloyLinearConfig"]


def test_standard_layout_on_disk(saved):
    _, folder = saved["mamba"]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    info = json.loads((folder / "config.json").read_text())
    assert info["model_type"] == "alloyml-linear"
    assert info["architectures"] == ["AlloyLinearForCausalLM"]
    assert info["mixer"] == "mamba" and info["d_model"] == 32 and "top_k" not in info


@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_auto_model_logits_and_greedy_ids_equal_alloyml(saved, mixer):
    from transformers import AutoModelForCausalLM

    from alloyml.models.hf_bridge import AlloyLinearForCausalLM

    model, folder = saved[mixer]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(hf, AlloyLinearForCausalLM)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=1e-6)

    prompt = [72, 105, 33, 7, 200]
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert out[0, : len(prompt)].tolist() == prompt
    assert out[0, len(prompt):].tolist() == _ours(model, [prompt], 8)[0]


@pytest.mark.parametrize("mixer", MIXER_NAMES)
def test_left_padded_batch_equals_each_prompt_alone(saved, mixer):
    from transformers import AutoModelForCausalLM

    model, folder = saved[mixer]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = [[10, 20, 30, 40, 50], [60, 70], [80, 90, 100]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    alone = [_ours(model, [p], 6)[0] for p in prompts]
    assert out[:, width:].tolist() == alone


def test_sampling_scores_follow_the_sampled_sequence():
    """Under sampling (with a temperature), every step's scores equal alloyml's forward over the prompt plus
    the tokens sampled so far, divided by the temperature: the cache carried the right state."""
    from alloyml.models.hf_bridge import AlloyLinearForCausalLM

    model = _tiny("gla", seed=3)
    hf = AlloyLinearForCausalLM.from_linear_lm(model)
    prompt = torch.tensor([[1, 2, 3, 4]])
    torch.manual_seed(0)
    out = hf.generate(prompt, do_sample=True, temperature=0.7, top_k=0, max_new_tokens=6,
                      output_scores=True, return_dict_in_generate=True, num_return_sequences=2)
    seqs = out.sequences
    assert seqs.shape == (2, 10)
    with torch.no_grad():
        full = model(seqs).logits  # [2, 10, V]
    for step, scores in enumerate(out.scores):
        torch.testing.assert_close(scores, full[:, 3 + step] / 0.7, rtol=0, atol=1e-5)
    assert seqs[0, 4:].tolist() != seqs[1, 4:].tolist()  # two different samples, not greedy copies


def _naive_beam_search(model, prompt, beams, steps):
    """Beam search by brute force: every step rescores each beam's whole sequence with the parallel
    forward (no state carried) and keeps the `beams` best total log-probabilities."""
    alive = [(list(prompt), 0.0)]
    for _ in range(steps):
        candidates = []
        for seq, score in alive:
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].float(), -1)
            candidates += [(seq + [t], score + logp[t].item()) for t in range(logp.shape[0])]
        alive = sorted(candidates, key=lambda c: -c[1])[:beams]
    return alive[0][0]


@pytest.mark.parametrize("mixer", ["mamba", "softmax"])
def test_beam_search_equals_brute_force_beams(saved, mixer):
    from transformers import AutoModelForCausalLM

    model, folder = saved[mixer]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = [5, 6, 7]
    out = hf.generate(torch.tensor([prompt]), num_beams=3, max_new_tokens=4, do_sample=False, length_penalty=0.0)
    assert out[0].tolist() == _naive_beam_search(model, prompt, beams=3, steps=4)


def test_without_cache_generation_is_the_same(saved):
    from transformers import AutoModelForCausalLM

    model, folder = saved["retnet"]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.tensor([[40, 41, 42]])
    lengths = []
    hook = hf.embed.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[-1]))
    cached = hf.generate(prompt, max_new_tokens=5, do_sample=False)
    assert lengths == [3, 1, 1, 1, 1]  # one prefill, then one token a step
    lengths.clear()
    recomputed = hf.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    hook.remove()
    assert lengths == [3, 4, 5, 6, 7]  # the whole sequence every step
    assert cached.tolist() == recomputed.tolist()
    assert cached[0, 3:].tolist() == _ours(model, [[40, 41, 42]], 5)[0]


def test_labels_loss_is_shifted_cross_entropy(saved):
    from transformers import AutoModelForCausalLM

    model, folder = saved["retnet"]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = hf(ids, labels=ids).loss
        logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(loss, expected)


def test_moe_config_round_trips_and_loads_in_alloyml(tmp_path):
    from transformers import AutoConfig

    from alloyml.models.hf_bridge import save_pretrained

    model = _tiny("mamba", ffn="moe", n_experts=4, top_k=2)
    folder = save_pretrained(model, tmp_path / "moe")
    assert AutoConfig.from_pretrained(folder).model_config() == model.config
    back = load_model(folder)  # alloyml's own loader reads the Hugging Face layout too
    assert back.config == model.config
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_tokenizer_is_the_byte_tokenizer(saved):
    from transformers import AutoTokenizer

    from alloyml.models import ByteTokenizer

    tok = AutoTokenizer.from_pretrained(saved["softmax"][1])
    text = "héllo, wörld ✓"
    assert tok(text).input_ids == ByteTokenizer().encode(text)
    assert tok.decode(ByteTokenizer().encode(text)) == text
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch.input_ids.tolist() == [[0, 0, 97, 98], [97, 98, 99, 100]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def _format_v1(model, folder):
    """A folder as save_model wrote it before the bridge (format version 1: no Hugging Face keys)."""
    save_model(model, folder, metadata={"step": 7})
    info = json.loads((folder / "config.json").read_text())
    old = {k: info[k] for k in ("architecture", "mixer", "ffn", "num_params", "num_active_params", "config", "step")}
    (folder / "config.json").write_text(json.dumps({**old, "format_version": 1}))
    (folder / "generation_config.json").unlink()
    return folder


def test_save_model_folders_load_with_auto_classes(tmp_path):
    """What alloyml itself saves (trainer checkpoints included) is a Hugging Face folder as it stands."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = _tiny("mamba", ffn="moe", n_experts=2)
    folder = save_model(model, tmp_path / "m", metadata={"step": 3})
    assert AutoConfig.from_pretrained(folder).model_config() == model.config
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[9, 8, 7, 6]])
    with torch.no_grad():
        # the same weights and ops; float32 rounding may differ in the last bit with the BLAS path taken
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)
    # transformers' own save_pretrained of the wrapper gives a folder alloyml loads back.
    hf.save_pretrained(tmp_path / "again")
    assert load_model(tmp_path / "again").config == model.config


def test_old_checkpoints_convert(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from alloyml.models.hf_bridge import convert_checkpoint

    model = _tiny("linear_attn")
    old = _format_v1(model, tmp_path / "old")
    with pytest.raises(ValueError, match="model_type"):  # what users met before the bridge
        AutoConfig.from_pretrained(old)
    assert load_model(old).config == model.config  # still loads in alloyml
    new = convert_checkpoint(old, tmp_path / "new")
    assert json.loads((new / "config.json").read_text())["step"] == 7
    hf = AutoModelForCausalLM.from_pretrained(new).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="already"):
        convert_checkpoint(new, tmp_path / "again")


def test_bad_padding_is_refused(saved):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(saved["gla"][1])
    with pytest.raises(InvalidInputError, match="left padding"):
        hf(torch.tensor([[1, 2, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))


def test_cli_converts_old_checkpoints(tmp_path, capsys):
    from alloyml.cli import main
    from alloyml.models import load_config

    model = _tiny("rwkv5")  # a format-1 folder said "rwkv" for the RWKV-5-like mixer, "rwkv5" today
    _format_v1(model, tmp_path / "old")
    info = json.loads((tmp_path / "old" / "config.json").read_text())
    info["mixer"] = info["config"]["mixer"] = "rwkv"
    (tmp_path / "old" / "config.json").write_text(json.dumps(info))
    assert main(["models", "convert", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model_type"] == "alloyml-linear"
    assert load_config(tmp_path / "new") == model.config
    assert main(["models", "convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_hf_language_model_over_an_alloyml_folder_equals_recurrent_lm(tmp_path):
    """`alloyml.lm.HFCausalLM` (transformers' generate) on a plain save_model folder, tokenizer files
    absent, writes what `RecurrentLM` (alloyml's own decoding) writes."""
    from alloyml.lm import RecurrentLM
    from alloyml.lm.hf import HFCausalLM

    model = _tiny("gla", seed=5)
    folder = save_model(model, tmp_path / "m")
    ours = RecurrentLM(model).generate(["abc", "hello world"], max_tokens=6, temperature=0.0)
    theirs = HFCausalLM.from_pretrained(folder).generate(["abc", "hello world"], max_tokens=6, temperature=0.0)
    assert [g.texts for g in theirs] == [g.texts for g in ours]
    assert [g.prompt_tokens for g in theirs] == [3, 11]
