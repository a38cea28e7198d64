"""LLaDA-V training stages through `accelerate`, from a YAML recipe.

    accelerate launch [--config_file configs/accelerate/X.yaml] -m vision.train RECIPE.yaml [key=value ...]
    python -m vision.train RECIPE.yaml [key=value ...]                    (one process)

Stages (LLaDA-V paper, Sec. 4; `configs/recipes/llada_v_stage{1,2}.yaml`):

  stage 1  language alignment: only the connector (`mm_projector`, and `image_newline`) is trained,
           on caption-style data (LLaVA-Pretrain 558K), lr 1e-3; the tower and LLaDA are frozen.
  stage 2  visual instruction tuning: everything is trained, lr 1e-5, the vision tower in its own
           parameter group at `vision_tower_lr` (2e-6).

The model is either an LLaDA-V checkpoint (`model_name_or_path`, e.g. stage 1's output for stage 2) or
built from a LLaDA text checkpoint (`language_model`) and a SigLIP tower (`vision_tower`: a checkpoint
folder or Hub id whose weights are loaded, or `vision_config`: sizes of a new, randomly initialised
tower), with a new connector.

The loop, top to bottom: LLaVA JSON rows -> examples (one per assistant turn, `vision.data`) -> a
fixed order (epoch e a permutation seeded by (seed, e), `llada.train.DataOrder`) -> micro-batches:
images preprocessed (`vision.image_processing`), spliced at the placeholders, right-padded with EOS
(trained as response), noised on the embeddings and scored by `vision.losses.llada_v_sft_objective`
(the noise of each example from a generator seeded by (seed, position)) -> AdamW with the schedule of
`llada.train.learning_rate_at`, gradient accumulation and clipping -> `checkpoint-N/` every
`save_steps` and `final/`, each in the Hub layout (config.json with its `vision_config`,
model.safetensors, tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

STAGES = (1, 2)
_FLOAT_FIELDS = ("lr", "vision_tower_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "max_grad_norm",
                 "decay_fraction", "min_lr_ratio", "mask_eps", "num_epochs")


@dataclass
class VisionTrainConfig:
    """Everything a LLaDA-V training run needs (a YAML recipe plus `key=value` overrides)."""

    stage: int = 1  # 1: connector only; 2: everything (vision tower at vision_tower_lr)
    # ---- model: an LLaDA-V checkpoint ...
    model_name_or_path: Optional[str] = None
    # ---- ... or built from a LLaDA text model and a SigLIP tower
    language_model: Optional[str] = None
    vision_tower: Optional[str] = None  # SigLIP checkpoint (folder or Hub id): config and weights
    vision_config: Optional[dict] = None  # or SiglipVisionConfig fields of a new, random tower
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_patch_merge_type: str = "spatial_unpad"
    image_aspect_ratio: str = "anyres_max_4"
    image_grid_pinpoints: Any = "(1x1),...,(6x6)"
    tokenizer_name_or_path: Optional[str] = None  # default: the model's / language model's folder
    # new words for the tokenizer of a NEW LLaDA-V (with language_model): e.g. a domain's answer words, so that
    # each is one token; they take the language model's spare embedding rows (embedding_size > vocab_size),
    # or the embedding and head grow; their rows start as the mean of the existing ones (trained in stage 2)
    added_tokens: list = field(default_factory=list)
    # ---- data (LLaVA JSON: {"image": ..., "conversations": [{"from", "value"}, ...]})
    train_data: list = field(default_factory=list)
    image_folder: Optional[str] = None
    system_prompt: Optional[str] = "default"  # "default": the llava_llada system prompt; null: none
    max_length: Optional[int] = None  # longest spliced example (default: the model's context)
    too_long: str = "skip"  # "skip" (counted) or "error"
    # ---- optimisation
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: int = 0  # 0: from num_epochs
    num_epochs: float = 1.0
    lr: float = 1e-3
    vision_tower_lr: Optional[float] = None  # stage 2; None: lr
    train_image_newline: bool = True  # stage 1: image_newline trains with the connector
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    lr_schedule: str = "cosine"  # "cosine", "wsd" or "constant" (llada.train.learning_rate_at)
    warmup_steps: int = 0
    decay_fraction: float = 0.1
    min_lr_ratio: float = 0.0
    mask_eps: float = 1e-3
    # ---- numerics
    mixed_precision: Optional[str] = None  # "no", "bf16", "fp16"; None: from the accelerate config
    gradient_checkpointing: bool = False
    num_threads: Optional[int] = None
    # ---- output
    output_dir: str = "runs/llada_v"
    save_steps: int = 0
    logging_steps: int = 10
    log_with: Optional[str] = None
    seed: int = 42

    def __post_init__(self) -> None:
        problems = []
        for name in _FLOAT_FIELDS:  # YAML reads "1e-3" (no dot) as a string
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    problems.append(f"{name}={value!r} is not a number")
        if self.stage not in STAGES:
            problems.append(f"stage={self.stage!r} (expected 1 or 2)")
        built = self.language_model is not None
        if (self.model_name_or_path is None) == (not built):
            problems.append("give exactly one of model_name_or_path (an LLaDA-V checkpoint) or language_model "
                            "(+ vision_tower or vision_config) to build one")
        if self.added_tokens and not built:
            problems.append("added_tokens only applies when a new LLaDA-V is built from language_model (a "
                            "checkpoint's tokenizer already holds its words)")
        if len(set(map(str, self.added_tokens))) != len(self.added_tokens) or any(not str(t) for t in self.added_tokens):
            problems.append(f"added_tokens={self.added_tokens!r} must be distinct, non-empty words")
        if built and (self.vision_tower is None) == (self.vision_config is None):
            problems.append("a new LLaDA-V needs exactly one of vision_tower (a SigLIP checkpoint) or vision_config")
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if not self.train_data:
            problems.append("train_data is empty (give LLaVA-style JSON files)")
        for name in ("micro_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_steps < 0 or (self.max_steps == 0 and self.num_epochs <= 0):
            problems.append("give max_steps > 0 or num_epochs > 0")
        if self.lr_schedule not in ("cosine", "wsd", "constant"):
            problems.append(f"lr_schedule={self.lr_schedule!r} (expected cosine, wsd or constant)")
        if self.too_long not in ("skip", "error"):
            problems.append(f"too_long={self.too_long!r} (expected skip or error)")
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            problems.append(f"mixed_precision={self.mixed_precision!r} (expected no, bf16 or fp16)")
        if problems:
            raise ValueError("VisionTrainConfig: " + "; ".join(problems))

    @classmethod
    def from_yaml_and_overrides(cls, recipe: Optional[str], overrides: Sequence[str] = ()) -> "VisionTrainConfig":
        """Read a YAML recipe (a mapping of fields) and apply `key=value` overrides (values parsed as YAML)."""
        from llada.train import config_from_recipe

        return config_from_recipe(cls, recipe, overrides)


# --------------------------------------------------------------------------- model
def build_llada_v(config: VisionTrainConfig, vocab_size: Optional[int] = None):
    """A new LLaDA-V: the language model's weights, the tower's (or a random tower), a new connector.

    `vocab_size`: the tokenizer's length when `added_tokens` grew it: the config's vocab_size follows it, and the
    embedding / head grow (to a multiple of 64) when it exceeds their rows; the new rows are the mean row."""
    from transformers import AutoConfig, SiglipVisionModel

    from llada import LLaDAModelLM

    from .configuration_llava_llada import LlavaLLaDAConfig, _vision_config_from_dict, resolve_vision_config
    from .modeling_llava_llada import LlavaLLaDAModelLM

    lm_config = AutoConfig.from_pretrained(config.language_model)
    fields = lm_config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "name_or_path"):
        fields.pop(key, None)
    rows = lm_config.padded_vocab_size
    if vocab_size is not None and vocab_size > lm_config.vocab_size:
        fields["vocab_size"] = vocab_size
        if vocab_size > rows:
            fields["embedding_size"] = -(-vocab_size // 64) * 64
    if config.vision_tower is not None:
        vision_config = resolve_vision_config(config.vision_tower, None)
    else:
        vision_config = _vision_config_from_dict(config.vision_config)
    llava_config = LlavaLLaDAConfig(
        vision_config=vision_config,
        mm_vision_tower=config.vision_tower,
        mm_hidden_size=vision_config.hidden_size,
        mm_projector_type=config.mm_projector_type,
        mm_vision_select_layer=config.mm_vision_select_layer,
        mm_patch_merge_type=config.mm_patch_merge_type,
        image_aspect_ratio=config.image_aspect_ratio,
        image_grid_pinpoints=config.image_grid_pinpoints,
        **fields,
    )
    model = LlavaLLaDAModelLM(llava_config)
    lm = LLaDAModelLM.from_pretrained(config.language_model, dtype=torch.float32)
    state = lm.state_dict()
    new_rows = llava_config.padded_vocab_size
    if new_rows > rows:  # grown embedding / head: old rows copied, new ones the mean row
        for key in ("model.transformer.wte.weight", "model.transformer.ff_out.weight"):  # no head when tied
            if key in state:
                value = state[key]
                state[key] = torch.cat([value, value.mean(0, keepdim=True).expand(new_rows - rows, -1)])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("model.vision_tower.", "model.mm_projector.", "model.image_newline"))]
    if missing or unexpected:
        raise ValueError(f"language model {config.language_model}: weights do not fit (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    if config.vision_tower is not None:
        tower = SiglipVisionModel.from_pretrained(config.vision_tower, dtype=torch.float32)
        missing, _ = model.model.vision_tower.vision_tower.load_state_dict(tower.state_dict(), strict=False)
        if missing:
            raise ValueError(f"vision tower {config.vision_tower}: missing weights {missing[:4]}")
    return model


def load_model_and_tokenizer(config: VisionTrainConfig):
    from transformers import AutoTokenizer

    from llada.tokenization import LLADA_CHAT_TEMPLATE

    from .modeling_llava_llada import LlavaLLaDAModelLM

    name = config.tokenizer_name_or_path or config.model_name_or_path or config.language_model
    tokenizer = AutoTokenizer.from_pretrained(name)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    if config.model_name_or_path is not None:
        return LlavaLLaDAModelLM.from_pretrained(config.model_name_or_path, dtype=torch.float32), tokenizer
    vocab = None
    if config.added_tokens:
        known = [t for t in map(str, config.added_tokens) if t in tokenizer.get_vocab()]
        if known:
            raise ValueError(f"added_tokens {known} are already tokens of {name}")
        tokenizer.add_tokens([str(t) for t in config.added_tokens])
        vocab = len(tokenizer)
    return build_llada_v(config, vocab), tokenizer


def set_trainable(model, config: VisionTrainConfig) -> list[dict]:
    """requires_grad per stage; returns the optimizer parameter groups (with their peak lr).

    Stage 1: mm_projector (+ image_newline when `train_image_newline`) at `lr`; the rest frozen.
    Stage 2: everything; the vision tower in its own group at `vision_tower_lr` (default `lr`).
    """
    unused = {id(p) for p in model.model.vision_tower.unused_parameters()}  # never trained (DDP needs this)
    tower = {id(p) for p in model.model.vision_tower.parameters()}
    connector = {id(p) for p in model.model.mm_projector.parameters()}
    if model.model.image_newline is not None and (config.stage == 2 or config.train_image_newline):
        connector.add(id(model.model.image_newline))
    groups: dict[str, list] = {"vision_tower": [], "connector": [], "language_model": []}
    for p in model.parameters():
        if id(p) in unused:
            p.requires_grad_(False)
            continue
        if id(p) in tower:
            groups["vision_tower"].append(p)
        elif id(p) in connector:
            groups["connector"].append(p)
        else:
            groups["language_model"].append(p)
    trainable = {"connector"} if config.stage == 1 else {"vision_tower", "connector", "language_model"}
    out = []
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in trainable)
        if name in trainable and params:
            lr = config.vision_tower_lr if (name == "vision_tower" and config.vision_tower_lr is not None) else config.lr
            out.append({"name": name, "params": params, "lr": lr, "peak_lr": lr})
    return out


class LladaVSFTObjective(nn.Module):
    """The whole training computation as one module (so DDP / DeepSpeed see a single forward):
    images -> tower -> connector -> splice -> EOS padding -> noise on embeddings -> SFT loss."""

    def __init__(self, model, eos_token_id: int, max_length: Optional[int], mask_eps: float):
        super().__init__()
        self.model = model
        self.eos_token_id = eos_token_id
        self.max_length = max_length
        self.mask_eps = mask_eps

    def forward(self, input_ids, attention_mask, labels, pixel_values, image_sizes, generators=None):
        from .losses import llada_v_sft_objective

        spliced = self.model.prepare_inputs_embeds(
            input_ids, pixel_values, image_sizes, attention_mask=attention_mask, labels=labels,
            padding_side="right", max_length=self.max_length,
        )
        embeds, labels = spliced.inputs_embeds, spliced.labels
        pad = spliced.attention_mask == 0
        if bool(pad.any()):  # EOS padding, attended and trained as response (LLaDA SFT)
            eos_vec = self.model.get_input_embeddings()(torch.tensor([self.eos_token_id], device=embeds.device))[0]
            embeds = torch.where(pad[..., None], eos_vec.to(embeds.dtype), embeds)
            labels = labels.masked_fill(pad, self.eos_token_id)
        out = llada_v_sft_objective(self.model, embeds, labels, None, eps=self.mask_eps, generator=generators)
        return out.loss, out.num_masked, out.num_tokens


def collate(examples, pad_id: int, image_cfg) -> dict:
    """Right-pad ids (attention mask 0 on padding) and labels; preprocess the images of the batch."""
    from .image_processing import process_images

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    paths = []
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        mask[b, :n] = 1
        paths.extend(e.images)
    pixel_values, sizes = process_images(paths, image_cfg) if paths else ([], [])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixel_values,
            "image_sizes": sizes}


def fits(example, model, image_cfg, max_length: int) -> bool:
    """Whether an example's spliced length (text + image rows, from the grid arithmetic) fits."""
    from .image_processing import image_size
    from .merging import num_image_tokens

    n = len(example.input_ids) - len(example.images)
    for path in example.images:
        n += num_image_tokens(image_size(path), model.config)
    return n <= max_length


# --------------------------------------------------------------------------- loop
def train(config: VisionTrainConfig) -> Path:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from llada.train import DataOrder, derived_seed, learning_rate_at

    from .conversation import LLAVA_LLADA_SYSTEM_PROMPT
    from .data import VisionDataError, load_llava_json, tokenize_dataset
    from .image_processing import ImageProcessingConfig

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accel_kwargs: dict = dict(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              mixed_precision=config.mixed_precision, log_with=config.log_with,
                              project_dir=config.output_dir)
    if not torch.cuda.is_available():  # as llada.train: CPU processes join over gloo
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            from accelerate.utils import InitProcessGroupKwargs

            accel_kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        else:
            accel_kwargs["cpu"] = True
    accelerator = Accelerator(**accel_kwargs)
    log = accelerator.print
    torch.manual_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    groups = set_trainable(model, config)
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    log(f"stage {config.stage}: training {', '.join(g['name'] for g in groups)} ({n_trainable:,} parameters)")

    system = LLAVA_LLADA_SYSTEM_PROMPT if config.system_prompt == "default" else config.system_prompt
    examples = tokenize_dataset(load_llava_json(config.train_data), tokenizer, image_folder=config.image_folder,
                                system=system, name=",".join(map(str, config.train_data)))
    image_cfg = ImageProcessingConfig.from_model_config(model.config)
    max_length = config.max_length or model.config.context_length
    kept = [e for e in examples if fits(e, model, image_cfg, max_length)]
    if len(kept) < len(examples):
        if config.too_long == "error":
            raise VisionDataError(f"{len(examples) - len(kept)} example(s) are longer than max_length={max_length}")
        log(f"skipped {len(examples) - len(kept)} example(s) longer than max_length={max_length}")
    examples = kept
    if not examples:
        raise VisionDataError("no training example left")

    P = accelerator.num_processes
    G = config.micro_batch_size * P * config.gradient_accumulation_steps
    total = config.max_steps or max(1, math.ceil(config.num_epochs * len(examples) / G))
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "name"} for g in groups],
        lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    eos = model.config.eos_token_id
    objective = LladaVSFTObjective(model, eos, max_length, config.mask_eps)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if config.log_with:
        accelerator.init_trackers("llada_v", config=dataclasses.asdict(config))
    order = DataOrder(len(examples), config.seed)
    out_dir = Path(config.output_dir)
    progress = tqdm(range(total), disable=not accelerator.is_local_main_process, desc=f"stage {config.stage}")
    t0, last_loss = time.time(), float("nan")
    history = []
    for step in progress:
        lr_scale = learning_rate_at(step, total, _ScheduleView(config)) / config.lr
        for g in optimizer.param_groups:
            g["lr"] = g["peak_lr"] * lr_scale
        step_loss = 0.0
        for micro in range(config.gradient_accumulation_steps):
            start = (step * config.gradient_accumulation_steps + micro) * config.micro_batch_size * P
            positions = range(start + accelerator.process_index * config.micro_batch_size,
                              start + (accelerator.process_index + 1) * config.micro_batch_size)
            batch_examples = [examples[order.index(p)] for p in positions]
            batch = collate(batch_examples, eos, image_cfg)
            gens = [torch.Generator().manual_seed(derived_seed(config.seed, "noise", p)) for p in positions]
            with accelerator.accumulate(objective), accelerator.autocast():
                loss, _, _ = objective(batch["input_ids"].to(accelerator.device),
                                       batch["attention_mask"].to(accelerator.device),
                                       batch["labels"].to(accelerator.device),
                                       [pv.to(accelerator.device) for pv in batch["pixel_values"]],
                                       batch["image_sizes"], gens)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            step_loss += float(loss.detach()) / config.gradient_accumulation_steps
        last_loss = float(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), reduction="mean"))
        history.append(last_loss)
        if step % config.logging_steps == 0 or step == total - 1:
            progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if config.log_with:
                accelerator.log({"loss": last_loss, "lr": optimizer.param_groups[0]["lr"]}, step=step)
        if config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < total:
            save(accelerator, objective, tokenizer, out_dir / f"checkpoint-{step + 1}")
    final = out_dir / "final"
    save(accelerator, objective, tokenizer, final)
    if accelerator.is_main_process:
        (final / "training_summary.json").write_text(json.dumps({
            "stage": config.stage, "steps": total, "examples": len(examples), "final_loss": last_loss,
            "loss_history": history, "wall_seconds": time.time() - t0, "processes": P,
        }, indent=2) + "\n")
    log(f"final model in {final}")
    accelerator.end_training()
    return final


class _ScheduleView:
    """The fields `llada.train.learning_rate_at` reads, from a VisionTrainConfig."""

    def __init__(self, config: VisionTrainConfig):
        self.lr, self.warmup_steps, self.lr_schedule = config.lr, config.warmup_steps, config.lr_schedule
        self.min_lr_ratio, self.decay_fraction = config.min_lr_ratio, config.decay_fraction


def save(accelerator, objective, tokenizer, folder: Path) -> None:
    """The model in the Hub layout (config.json with vision_config, safetensors, tokenizer)."""
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(objective).model
    state = accelerator.get_state_dict(objective)
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} if state else None
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m vision.train RECIPE.yaml [key=value ...]` (under `accelerate launch` for many processes)."""
    import argparse

    from .data import VisionDataError
    from .image_processing import ImageError

    parser = argparse.ArgumentParser(prog="vision.train", description="LLaDA-V training stages (stage 1: connector; "
                                     "stage 2: everything) from a YAML recipe; run under `accelerate launch -m vision.train`.")
    parser.add_argument("recipe", nargs="?", help="YAML recipe (VisionTrainConfig fields)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage=2 lr=1e-5")
    args = parser.parse_args(argv)
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():  # no recipe, only key=value
        recipe, overrides = None, [recipe] + overrides
    try:
        train(VisionTrainConfig.from_yaml_and_overrides(recipe, overrides))
    except (ValueError, VisionDataError, ImageError) as err:
        print(f"vision.train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
