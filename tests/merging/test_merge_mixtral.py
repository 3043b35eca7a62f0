"""Mixtral MoE checkpoints from Hugging Face Llama experts: the same tensors as `mergekit-moe` (experts,
shared weights, and routers from its `hidden` gate mode), loadable by transformers' MixtralForCausalLM,
whose output is checked against a hand-written top-k mixture of the dense experts' MLPs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from merge_helpers import load_state, perturbed

from alloyml.errors import InvalidInputError
from alloyml.merging.mixtral import mixtral_from_experts

PROMPTS = {"a": ["w1 w2 w3", "w4 w5"], "b": ["w30 w31 w32 w33", "w20"]}


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    from test_merge_tokenizers import WORDS, _tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("moe_llamas")
    tok = _tokenizer(WORDS)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = {}
    for name, state in (("base", base), ("a", perturbed(base, 0.05, 1)), ("b", perturbed(base, 0.05, 2))):
        model.load_state_dict(state)
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return {k: str(v) for k, v in paths.items()}


def _experts(p):
    return [{"source_model": p[n], "positive_prompts": PROMPTS[n]} for n in ("a", "b")]


def test_mixtral_matches_mergekit_moe_and_loads(llamas, tmp_path):
    from transformers import LlamaForCausalLM, MixtralForCausalLM

    built = mixtral_from_experts(llamas["base"], _experts(llamas), tmp_path / "ours", experts_per_token=1)
    assert built.gates.shape == (2, 2, 16)
    ours = load_state(tmp_path / "ours")

    cli = Path(sys.executable).parent / "mergekit-moe"
    if not cli.exists() or shutil.which("mergekit-moe", path=str(cli.parent)) is None:
        pytest.skip("mergekit-moe is not installed")
    config = {"base_model": llamas["base"], "gate_mode": "hidden", "dtype": "float32", "experts_per_token": 1,
              "experts": _experts(llamas)}
    (tmp_path / "moe.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([str(cli), str(tmp_path / "moe.yaml"), str(tmp_path / "theirs"), "--device", "cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = load_state(tmp_path / "theirs")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        tol = 0 if ".mlp.gate." not in name else 1e-2  # gates: both from the base in bfloat16 (mergekit's dtype)
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=tol, msg=name)
        if ".mlp.gate." in name:  # unit rows, pointing the same way
            cos = torch.nn.functional.cosine_similarity(ours[name], tensor, dim=-1)
            assert (cos > 0.9999).all(), name

    # transformers loads it; with top-1 routing each token's MLP output is its chosen expert's dense MLP
    moe = MixtralForCausalLM.from_pretrained(tmp_path / "ours").eval()
    dense = {n: LlamaForCausalLM.from_pretrained(llamas[n]).eval() for n in ("a", "b")}
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        block = moe.model.layers[1].mlp
        out = block(x.unsqueeze(0))
        out = out[0] if isinstance(out, tuple) else out
        choice = (x @ ours["model.layers.1.mlp.gate.weight"].T).argmax(-1)
        expected = torch.stack([dense["ab"[int(c)]].model.layers[1].mlp(x[i]) for i, c in enumerate(choice)])
    torch.testing.assert_close(out.reshape(5, 16), expected, rtol=1e-5, atol=1e-6)
    assert len(set(choice.tolist())) >= 1


def test_hidden_gates_are_the_normalised_last_token_states(llamas):
    """Row e of layer i: the base's hidden state entering layer i at the last prompt position (BOS
    prepended), averaged over expert e's prompts, unit-normalised: recomputed here one prompt at a time."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from alloyml.merging.mixtral import Expert, gate_vectors

    experts = [Expert(llamas[n], PROMPTS[n]) for n in ("a", "b")]
    gates = gate_vectors(llamas["base"], experts, "hidden")
    model = LlamaForCausalLM.from_pretrained(llamas["base"], dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(llamas["base"])
    for e, expert in enumerate(experts):
        states = []
        for prompt in expert.positive_prompts:
            ids = tok("<s>" + prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                hs = model(**ids, output_hidden_states=True).hidden_states[:-1]
            states.append(torch.stack([h[0, -1].float() for h in hs]))
        mean = torch.stack(states).mean(0)
        expected = mean / mean.norm(dim=-1, keepdim=True)
        cos = torch.nn.functional.cosine_similarity(gates[:, e].float(), expected, dim=-1)
        assert (cos > 0.999).all()


def test_router_training_lowers_the_loss_and_only_moves_routers(llamas, tmp_path):
    texts = ["w1 w2 w3 w4", "w30 w31 w32", "w4 w5 w1", "w20 w30 w31"]
    # top-2 of 2: the mixing weights are the router's softmax (top-1's weight is always 1, with no gradient)
    built = mixtral_from_experts(llamas["base"], _experts(llamas), tmp_path / "trained", experts_per_token=2,
                                 router_steps=15, train_texts=texts, router_lr=5e-2)
    assert built.router_losses[-1] < built.router_losses[0]
    untrained = mixtral_from_experts(llamas["base"], _experts(llamas), tmp_path / "plain", experts_per_token=2)
    a, b = load_state(tmp_path / "trained"), load_state(untrained.path)
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    assert changed and all(n.endswith("mlp.gate.weight") for n in changed)


def test_bad_moe_inputs_are_refused(llamas, tmp_path):
    with pytest.raises(InvalidInputError, match="no positive_prompts"):
        mixtral_from_experts(llamas["base"], [llamas["a"], llamas["b"]], tmp_path / "x")
    with pytest.raises(InvalidInputError, match="gate_mode 'best'"):
        mixtral_from_experts(llamas["base"], _experts(llamas), tmp_path / "x", gate_mode="best")
    with pytest.raises(InvalidInputError, match="noise_scale"):
        mixtral_from_experts(llamas["base"], [{**_experts(llamas)[0], "noise_scale": 0.1}, llamas["b"]],
                             tmp_path / "x")
    assert not (tmp_path / "x").exists()
