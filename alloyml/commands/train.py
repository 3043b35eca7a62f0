"""`alloyml train CONFIG.yaml [--resume]`: train a new alloyml model, or fine-tune a saved alloyml model or a
Hugging Face causal LM (fully or with LoRA), on local text / JSONL / Parquet files or a saved `datasets`
dataset (config: alloyml.models.train_config).

Checkpoints go to `checkpoint_dir` every `checkpoint_every` steps; `--resume` continues from the latest
one and ends with the weights an uninterrupted run would have. The run is recorded in the store as kind
"train": the config as params, the loss, learning rate and gradient norm at every step as metric
histories, a dataset row for the files (by content fingerprint), and the output model with a
"fine-tune" lineage edge to its base model (registered too, if the store did not know it yet).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

_EXAMPLE = """\
example (see README, "Training"):
  model: {kind: smollm2, lora: {r: 8}}   # or {kind: alloyml, config: {d_model: 64, mixer: gla}}, {kind: hf, path: DIR}
  data: {files: [tasks.jsonl], prompt_field: input, completion_field: target, chat: true, seq_len: 64}
  steps: 60
  lr: 2.0e-4
  checkpoint_every: 20
  output: out/smollm2-tuned
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model (alloyml or Hugging Face, full or LoRA) on local files",
        description="Train from a YAML config validated whole before any work; the run, its loss curve and\n"
                    "the output model's lineage are recorded in the store (run kind 'train').",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config: model, data, output, steps, lr, checkpoint_every, seed, ...")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in the config's checkpoint folder")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from alloyml.models.train_config import load_train_config

    config = load_train_config(args.config)
    result = run_training(config, resume=args.resume, console=Console(), config_file=args.config)
    return 0 if result.run_id else 1


@dataclass
class TrainingResult:
    run_id: int
    model_id: int
    output: Path
    losses: list[float] = field(default_factory=list)  # every step of the run, resumed ones included
    resumed_at: int = 0


@dataclass
class _Built:
    module: object  # what Trainer trains: a LinearLM or an HFTrainable
    tokenizer: object
    encode: object
    encode_prompt: object
    end_ids: list[int]
    packed: bool
    pad_id: int
    base_path: str | None
    architecture: str


def _build(config) -> _Built:
    """The model to train and how to tokenize for it, per the config's model kind (seeded: new weights
    and LoRA adapters start the same on every run)."""
    import torch

    spec = config.model
    torch.manual_seed(config.seed)
    if spec.kind == "alloyml":
        from alloyml.models.config import ModelConfig
        from alloyml.models.model import LinearLM
        from alloyml.models.saving import load_model
        from alloyml.models.tokenizer import ByteTokenizer

        model = load_model(spec.path).train() if spec.path else LinearLM(ModelConfig(**spec.config))
        encode = ByteTokenizer().encode
        return _Built(model, None, encode, encode, [], True, 0, spec.path,
                      f"alloyml.LinearLM:{model.config.mixer}/{model.config.ffn}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alloyml.models.hf_training import HFTrainable, LoraSettings

    if spec.kind == "smollm2":
        from alloyml.lm.hf import load_smollm2

        loaded = load_smollm2()
        model, tokenizer, path = loaded.model, loaded.tokenizer, str(loaded.model.name_or_path)
    else:
        path = spec.path
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    torch.manual_seed(config.seed)  # the LoRA initialisation
    lora = None
    if spec.lora:
        lora = LoraSettings(spec.lora.r, spec.lora.alpha, spec.lora.dropout, spec.lora.target_modules)
    trainable = HFTrainable(model.float().train(), lora)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    encode_prompt = encode
    if config.data.chat:
        if getattr(tokenizer, "chat_template", None) is None:
            from alloyml.errors import ConfigError

            raise ConfigError(f"train config: data.chat is set but the tokenizer of {path} has no chat template")

        def encode_prompt(prompt: str) -> list[int]:  # as HFCausalLM renders a chat prompt
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=False)
            return encode(text)

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    architecture = (model.config.architectures or [type(model).__name__])[0]
    return _Built(trainable, tokenizer, encode, encode_prompt, [eos] if eos is not None else [], False, pad, path,
                  architecture + (" + LoRA" if lora else ""))


def run_training(config, *, resume: bool = False, console=None, config_file: str | None = None,
                 on_step=None) -> TrainingResult:
    """Train per `config` (a TrainConfig) and record it; `on_step(StepMetrics)` is called after each step."""
    from rich.console import Console

    from alloyml.errors import InvalidInputError
    from alloyml.models.text_data import example_batches, read_documents, tokenize_examples
    from alloyml.models.trainer import Trainer, list_checkpoints
    from alloyml.platform.client import Platform
    from alloyml.platform.settings import display_url

    console = console or Console()
    checkpoints = config.checkpoints
    existing = list_checkpoints(checkpoints) if checkpoints.is_dir() else []
    if resume and not existing:
        raise InvalidInputError(f"--resume: no checkpoint in {checkpoints} to continue from")
    if existing and not resume:
        raise InvalidInputError(f"{checkpoints} holds checkpoints of an earlier run (latest step "
                                f"{existing[-1].step}); continue it with --resume, or remove the folder")
    resumed_at = existing[-1].step if resume else 0
    if resumed_at >= config.steps:
        raise InvalidInputError(f"--resume: the latest checkpoint is at step {resumed_at}, the config trains "
                                f"{config.steps} steps; nothing is left to do")

    data = config.data
    documents = read_documents(data.files, data.text_field, data.prompt_field, data.completion_field, data.split)
    built = _build(config)
    examples = tokenize_examples(documents, built.encode, data.seq_len, built.encode_prompt, built.end_ids)
    batch = example_batches(examples, data.batch_size, config.seed, packed=built.packed, pad_id=built.pad_id)
    name = config.name or f"train {Path(config.output).name}"
    params = {"config": config.model_dump(mode="json"), "output": config.output, "examples": len(examples),
              "documents": len(documents), "config_file": str(Path(config_file).resolve()) if config_file else None}

    with Platform() as platform:
        dataset_id = _dataset(platform, data, len(documents))
        base_id = _base_model(platform, built) if built.base_path else None
        previous = _interrupted_run(platform, config.output) if resume else None
        if previous is not None:
            params["resumed_from_run"] = previous
        params["resumed_at_step"] = resumed_at
        with platform.run("train", name=name, params=params, dataset_id=dataset_id, model_id=base_id) as run:
            console.print(f"[bold]train[/bold] {name!r}: {config.model.kind} model, {len(examples)} examples from "
                          f"{len(documents)} documents, {config.steps} steps — run {run.id} in "
                          f"{display_url(platform.settings.db_url)}")
            losses = _copy_history(platform, previous, run, resumed_at) if previous is not None else []
            if resume:
                console.print(f"resuming from the checkpoint at step {resumed_at} in {checkpoints}")
            trainer = Trainer(steps=config.steps, lr=config.lr, weight_decay=config.weight_decay,
                              warmup_steps=config.warmup_steps, min_lr_ratio=config.min_lr_ratio,
                              grad_clip=config.grad_clip, precision="fp32", checkpoint_every=config.checkpoint_every,
                              checkpoint_dir=checkpoints if config.checkpoint_every else None)
            report_every = max(1, config.steps // 10)
            with _progress(console, config.steps, resumed_at) as advance:

                def on_metrics(m) -> None:
                    run.log_metrics(step=m.step, loss=m.loss, lr=m.lr, grad_norm=m.grad_norm)
                    losses.append(m.loss)
                    advance()
                    if m.step % report_every == 0 or m.step == config.steps:
                        console.print(f"  step {m.step}/{config.steps}: loss {m.loss:.4f} (lr {m.lr:.2e})",
                                      highlight=False)
                    if on_step is not None:
                        on_step(m)

                trainer.callback = on_metrics
                trainer.fit(built.module, batch, resume_from=checkpoints if resume else None)
            output = _save_output(built, config.output, run.id)
            run.log_metrics(final_loss=losses[-1], steps=config.steps)
            model_id = _register_output(platform, config, built, output, base_id, losses[-1])
    console.print(f"model written to {output} (model {model_id}, run {run.id}); final loss {losses[-1]:.4f}",
                  highlight=False)
    return TrainingResult(run.id, model_id, output, losses, resumed_at)


def _progress(console, total: int, completed: int):
    from alloyml.commands.tune import _trial_progress

    return _trial_progress(console, total, "steps", completed=completed)


def _dataset(platform, data, n_documents: int) -> int:
    """The dataset row of the data files: the one with the same content fingerprint, or a new one (rows
    stay in the files; the row records where they are)."""
    from alloyml.models.text_data import fingerprint

    digest = fingerprint(data.files)
    for dataset in platform.store.list_datasets():
        if dataset.fingerprint == digest:
            return dataset.id
    schema = {"files": data.files, "fields": [data.prompt_field, data.completion_field] if data.prompt_field
              else [data.text_field]}
    name = Path(data.files[0]).stem if len(data.files) == 1 else f"{Path(data.files[0]).stem} +{len(data.files) - 1}"
    return platform.store.add_dataset(name, "1", n_documents, schema, digest).id


def _base_model(platform, built) -> int:
    """The store's model whose artifact is the base's folder, registered now if it is not there."""
    for model in platform.store.list_models():
        if model.artifact == built.base_path:
            return model.id
    architecture = built.architecture.removesuffix(" + LoRA")
    return platform.register_model(Path(built.base_path).name, architecture, artifact=built.base_path,
                                   n_params=_n_params(built.module)).id


def _n_params(module) -> int:
    """Parameters of the model itself (a LoRA adapter's are folded into the saved output)."""
    return sum(p.numel() for name, p in module.named_parameters() if "lora_" not in name)


def _interrupted_run(platform, output: str) -> int | None:
    """The latest train run that wrote to the same output (the one being resumed), if recorded."""
    runs = [r for r in platform.store.list_runs(kind="train", limit=1000) if r.params.get("output") == output]
    return max((r.id for r in runs), default=None)


def _copy_history(platform, previous: int, run, resumed_at: int) -> list[float]:
    """Steps 1..resumed_at of the interrupted run's curves, copied so the new run holds the whole curve."""
    curves = {key: platform.store.metric_history(previous, key) for key in ("loss", "lr", "grad_norm")}
    losses = []
    for i, step in enumerate(curves["loss"].steps.tolist()):
        if step <= resumed_at:
            values = {k: float(h.values[i]) for k, h in curves.items() if i < len(h.values)}
            run.log_metrics(step=step, **values)
            losses.append(values["loss"])
    return losses


def _save_output(built, output: str, run_id: int) -> Path:
    if built.packed:  # an alloyml LinearLM: its own Hugging Face layout plus the byte tokenizer
        from alloyml.models.hf_bridge import save_pretrained

        return save_pretrained(built.module, output, metadata={"training_run": run_id})
    return built.module.save_pretrained(output, built.tokenizer, metadata={"training_run": run_id})


def _register_output(platform, config, built, output: Path, base_id: int | None, final_loss: float) -> int:
    name = config.name or output.name
    parents = [(base_id, "fine-tune")] if base_id is not None else []
    metrics = {"final_loss": final_loss}
    if built.packed:
        from alloyml.workflows.recording import register_model_dir

        return register_model_dir(platform, name, output, metrics=metrics, parents=parents)
    return platform.register_model(name, built.architecture, artifact=str(output), n_params=_n_params(built.module),
                                   metrics=metrics, parents=parents).id
