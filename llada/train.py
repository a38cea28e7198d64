"""Pretraining and SFT of LLaDA models, one process or many, through `accelerate`.

    accelerate launch [--config_file configs/accelerate/X.yaml] -m llada.train RECIPE.yaml [key=value ...]
    llada train RECIPE.yaml [key=value ...]                      (one process)

The recipe is a YAML mapping of `TrainConfig` fields; `key=value` pairs override it (values parsed as YAML,
so `lr=1e-4`, `lora=true`, `train_data=[a.jsonl,b.jsonl]` work).

The loop, top to bottom (nanoGPT style, accelerate for devices / DDP / DeepSpeed / FSDP / mixed precision):

  data     rows -> validated -> tokenised (`llada.data`) -> a fixed order: epoch e is a permutation seeded by
           (seed, e); the global batch of optimizer step s is positions [s G, (s + 1) G) of the concatenated
           epochs (G = micro_batch_size x processes x accumulation), each process taking its slice of each
           micro-batch. The noise of every example is drawn from a generator seeded by (seed, position), and
           the 1% random-length cut from (seed, step, micro-step): the result does not depend on how a global
           batch is split over processes, and a resumed run replays exactly what an uninterrupted one does.
  loss     `llada.losses.pretraining_objective` / `sft_objective` (the shared forward process).
  optim    AdamW; learning rate from `learning_rate_at` (warmup-stable-decay as in the paper, cosine, constant);
           gradient accumulation; clipping.
  save     every `save_steps`: `checkpoint-N/` in the Hub layout (config.json, model.safetensors, tokenizer,
           generation_config.json) + `accelerate_state/` (optimizer, RNG, ...) + `trainer_state.json` (written
           last: a checkpoint without it is incomplete and ignored). The final model goes to `final/`.
  logs     tqdm; accelerate trackers (tensorboard under `output_dir/logs`); `output_dir/train_log.jsonl`.
  resume   `resume: auto` continues from the newest complete checkpoint of `output_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .data import (
    DataError,
    DataStats,
    collate_pretraining,
    collate_sft,
    collate_sft_left,
    random_length_cut,
    read_rows,
    tokenize_pretraining,
    tokenize_sft,
)
from .losses import pretraining_objective, sft_objective
from .tokenization import LLADA_CHAT_TEMPLATE, special_token_ids

TASKS = ("pretrain", "sft")
SCHEDULES = ("wsd", "cosine", "constant")
DEFAULT_LORA_TARGETS = r".*blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)$"


@dataclass
class TrainConfig:
    """Everything a training run needs. Filled from a YAML recipe plus `key=value` overrides."""

    # ---- what to train
    task: str = "sft"  # "pretrain" or "sft"
    model_name_or_path: Optional[str] = None  # a checkpoint (Hub id or folder) to start from ...
    model_config: Optional[dict] = None  # ... or LLaDAConfig fields for a new, randomly initialised model
    tokenizer_name_or_path: Optional[str] = None  # default: model_name_or_path
    embedding_multiple: int = 64  # new models: embedding rows rounded up to a multiple of this
    # ---- data
    train_data: list = field(default_factory=list)  # local json / jsonl / parquet files, folders, globs, Hub ids
    dataset_split: str = "train"  # split of Hub datasets
    dataset_config: Optional[str] = None  # config name of Hub datasets
    text_field: str = "text"  # pretraining
    messages_field: str = "messages"  # SFT: chat messages ...
    prompt_field: str = "prompt"  # ... or prompt / response pairs
    response_field: str = "response"
    seq_len: int = 256  # pretraining: sequence length; SFT: longest prompt + response
    pack: bool = True  # pretraining: pack documents into seq_len chunks
    too_long: str = "truncate"  # "truncate", "skip" or "error"
    bad_rows: str = "error"  # "error" (stop, naming file and row) or "skip" (skip and count)
    sft_pad_to: Optional[int] = None  # SFT "right" layout: pad every batch to this length (default: its longest)
    # SFT layout: "right" (LLaDA guidelines: prompt + response right-padded with EOS to the batch's longest row) or
    # "left" (the sampler's layout: left-padded prompts, attention-masked, then exactly sft_response_length
    # response positions, the response EOS-padded; the model then sees at training what generation shows it)
    sft_layout: str = "right"
    sft_response_length: int = 32
    # ---- optimisation
    micro_batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 0  # optimizer steps; 0: derived from num_epochs
    num_epochs: float = 1.0
    lr: float = 4e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    lr_schedule: str = "wsd"  # "wsd" (warmup-stable-decay), "cosine" or "constant" (all after warmup)
    warmup_steps: int = 0
    decay_fraction: float = 0.1  # wsd: the last fraction of the steps decays linearly
    min_lr_ratio: float = 0.0  # final lr / peak lr (wsd and cosine)
    mask_eps: float = 1e-3  # p_mask = (1 - eps) t + eps
    random_length_probability: float = 0.01  # pretraining: a batch is cut to a random length this often
    # ---- numerics / memory
    mixed_precision: Optional[str] = None  # "no", "bf16", "fp16"; None: from the accelerate config
    gradient_checkpointing: bool = False
    num_threads: Optional[int] = None  # torch CPU threads per process
    # ---- LoRA / QLoRA (peft, bitsandbytes)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: Any = DEFAULT_LORA_TARGETS  # regex or list of module names
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base weights (needs a CUDA GPU); implies lora
    merge_lora: bool = True  # final/ holds the merged model (the adapter is saved next to it)
    # ---- output
    output_dir: str = "runs/llada"
    save_steps: int = 0  # 0: only the final model
    save_total_limit: int = 2  # keep this many checkpoints (0: all)
    logging_steps: int = 10
    log_with: Optional[str] = "tensorboard"  # accelerate tracker, or None
    run_name: str = "llada"
    resume: str = "auto"  # "auto" (newest complete checkpoint), "never", or a checkpoint folder
    seed: int = 42

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):  # YAML reads 1e-4 as a string: coerce numbers by the field's type
            value = getattr(self, f.name)
            kind = {"float": float, "Optional[float]": float, "int": int, "Optional[int]": int}.get(str(f.type))
            if kind is not None and isinstance(value, str):
                try:
                    setattr(self, f.name, kind(float(value)) if kind is int else kind(value))
                except ValueError:
                    problems.append(f"{f.name}={value!r} is not a number")
        if self.task not in TASKS:
            problems.append(f"task={self.task!r} (expected one of {TASKS})")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule={self.lr_schedule!r} (expected one of {SCHEDULES})")
        if self.too_long not in ("truncate", "skip", "error"):
            problems.append(f"too_long={self.too_long!r} (expected truncate, skip or error)")
        if self.sft_layout not in ("right", "left"):
            problems.append(f"sft_layout={self.sft_layout!r} (expected right or left)")
        if self.bad_rows not in ("error", "skip"):
            problems.append(f"bad_rows={self.bad_rows!r} (expected error or skip)")
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            problems.append(f"mixed_precision={self.mixed_precision!r} (expected no, bf16 or fp16)")
        if (self.model_name_or_path is None) == (self.model_config is None):
            problems.append("give exactly one of model_name_or_path (a checkpoint) or model_config (a new model)")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            problems.append("model_config must be a mapping of LLaDAConfig fields")
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if not self.train_data:
            problems.append("train_data is empty (give files, folders, globs or Hub dataset ids)")
        for name in ("micro_batch_size", "gradient_accumulation_steps", "seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_steps < 0 or (self.max_steps == 0 and self.num_epochs <= 0):
            problems.append("give max_steps > 0 or num_epochs > 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            problems.append(f"decay_fraction={self.decay_fraction} must lie in [0, 1]")
        if not 0.0 < self.mask_eps < 1.0:
            problems.append(f"mask_eps={self.mask_eps} must lie in (0, 1)")
        if self.load_in_4bit:
            self.lora = True
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_yaml_and_overrides(cls, recipe: Optional[str], overrides: Sequence[str] = ()) -> "TrainConfig":
        """Read a YAML recipe (a mapping of fields) and apply `key=value` overrides (values parsed as YAML)."""
        return config_from_recipe(cls, recipe, overrides)


def config_from_recipe(cls, recipe: Optional[str], overrides: Sequence[str] = ()):
    """An instance of the config dataclass `cls` from a YAML recipe (a mapping of its fields) and `key=value`
    overrides (values parsed as YAML; `field.key=value` sets one key of a mapping field such as `model_config`).
    Unknown fields are refused by name."""
    import yaml

    name = cls.__name__
    values: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"recipe {recipe}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"recipe {recipe}: expected a mapping of {name} fields, got {type(loaded).__name__}")
        values.update(loaded)
    known = {f.name for f in dataclasses.fields(cls)}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        head, _, sub = key.partition(".")
        if sub and head in known:
            values[head] = dict(values.get(head) or {})
            values[head][sub] = yaml.safe_load(raw)
            continue
        values[key] = yaml.safe_load(raw) if raw != "" else None
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {name} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**values)


# --------------------------------------------------------------------------- schedule
def learning_rate_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total_steps`.

    Warmup (all schedules): lr = peak * (step + 1) / W for step < W (W = warmup_steps).
    wsd (LLaDA's warmup-stable-decay): peak until the last D = round(decay_fraction * total) steps, then linear
        decay  lr = peak * (min_ratio + (1 - min_ratio) * (total - step - 1) / D)  -> peak * min_ratio at the end.
    cosine: lr = peak * (min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2), p = (step - W) / (total - W - 1).
    constant: lr = peak.
    """
    peak, warm = config.lr, config.warmup_steps
    if step < warm:
        return peak * (step + 1) / warm
    floor = config.min_lr_ratio
    if config.lr_schedule == "constant":
        return peak
    if config.lr_schedule == "cosine":
        span = max(1, total_steps - warm - 1)  # the last step reaches the floor
        progress = min(1.0, (step - warm) / span)
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    decay = int(round(config.decay_fraction * total_steps))
    start = total_steps - decay
    if decay <= 0 or step < start:
        return peak
    return peak * (floor + (1 - floor) * max(0, total_steps - step - 1) / decay)


# --------------------------------------------------------------------------- determinism helpers
def derived_seed(*keys: Any) -> int:
    """A 63-bit seed from a tuple of keys (stable across processes, runs and Python versions)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def _generator(*keys: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*keys))


class DataOrder:
    """The fixed global order of training examples: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, num_examples: int, seed: int):
        self.n, self.seed = num_examples, seed
        self._cache: dict[int, torch.Tensor] = {}

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n, generator=_generator(self.seed, "epoch", epoch))}
        return int(self._cache[epoch][offset])


# --------------------------------------------------------------------------- model / tokenizer
def load_tokenizer(config: TrainConfig):
    from transformers import AutoTokenizer

    name = config.tokenizer_name_or_path or config.model_name_or_path
    if name is None:
        raise ValueError("a new model (model_config) needs tokenizer_name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(name)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    return tokenizer


def build_model(config: TrainConfig, tokenizer, accelerator):
    """A new model from `model_config` (special ids and vocabulary from the tokenizer) or a checkpoint."""
    import llada  # noqa: F401  (registers the model type)
    from .configuration_llada import LLaDAConfig
    from .modeling_llada import LLaDAModelLM

    if config.model_config is not None:
        ids = special_token_ids(tokenizer)
        vocab = len(tokenizer)
        multiple = max(1, config.embedding_multiple)
        fields = dict(config.model_config)
        fields.setdefault("vocab_size", vocab)
        fields.setdefault("embedding_size", -(-vocab // multiple) * multiple)
        fields.setdefault("max_sequence_length", max(config.seq_len, 512))
        fields.update(mask_token_id=ids.mask, eos_token_id=ids.eos, pad_token_id=ids.pad, bos_token_id=ids.bos)
        if config.load_in_4bit:
            raise ValueError("load_in_4bit (QLoRA) needs pretrained weights: set model_name_or_path, not model_config")
        model_config = LLaDAConfig(**fields)
        torch.manual_seed(config.seed)  # every process initialises the same weights
        return LLaDAModelLM(model_config)
    kwargs: dict = {"dtype": torch.float32}
    if config.load_in_4bit:
        if not torch.cuda.is_available():
            raise ValueError(
                "load_in_4bit=true (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit training kernels are not available "
                "on CPU. Use lora=true without load_in_4bit on this machine."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ValueError("load_in_4bit=true needs bitsandbytes (pip install 'llada-suite[quant]')") from err
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["device_map"] = {"": accelerator.local_process_index}
    return LLaDAModelLM.from_pretrained(config.model_name_or_path, **kwargs)


def apply_lora(model, config: TrainConfig):
    """Wrap `model` with LoRA adapters (peft); 4-bit base weights are prepared for k-bit training first."""
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as err:
        raise ValueError("lora=true needs peft (pip install 'llada-suite[train]')") from err
    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    targets = config.lora_target_modules
    lora_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=targets, bias="none")
    return get_peft_model(model, lora_config)


# --------------------------------------------------------------------------- data
def load_training_data(config: TrainConfig, tokenizer, log=print):
    """Read, validate and tokenise `train_data`; refuse an empty result."""
    stats = DataStats()
    rows = read_rows(config.train_data, split=config.dataset_split, hub_config=config.dataset_config,
                     bad_rows=config.bad_rows, stats=stats)
    if config.task == "pretrain":
        examples = tokenize_pretraining(rows, tokenizer, seq_len=config.seq_len, text_field=config.text_field,
                                        pack=config.pack, too_long=config.too_long, bad_rows=config.bad_rows,
                                        stats=stats)
    else:
        examples = tokenize_sft(rows, tokenizer, seq_len=config.seq_len, messages_field=config.messages_field,
                                prompt_field=config.prompt_field, response_field=config.response_field,
                                too_long=config.too_long, bad_rows=config.bad_rows, stats=stats,
                                max_response_length=config.sft_response_length if config.sft_layout == "left" else None)
    if not examples:
        raise DataError(
            f"the training data {config.train_data} gave no usable {config.task} examples "
            f"({stats.rows} rows read, {stats.skipped_bad} malformed, {stats.skipped_too_long} too long"
            + (", documents shorter than seq_len are dropped when packing" if config.task == "pretrain" else "")
            + ")"
        )
    log(f"data: {stats.rows} rows -> {stats.examples} {config.task} examples, {stats.tokens} tokens; "
        f"skipped {stats.skipped_bad} malformed, {stats.skipped_too_long} too long; truncated {stats.truncated}")
    for problem in stats.problems:
        log(f"data: skipped: {problem}")
    return examples, stats


def total_optimizer_steps(config: TrainConfig, num_examples: int, num_processes: int) -> int:
    """max_steps, or ceil(num_epochs x examples / global batch)."""
    if config.max_steps > 0:
        return config.max_steps
    global_batch = config.micro_batch_size * num_processes * config.gradient_accumulation_steps
    return max(1, math.ceil(config.num_epochs * num_examples / global_batch))


def micro_batch_positions(step: int, micro: int, config: TrainConfig, process: int, num_processes: int) -> range:
    """Global example positions of micro-batch `micro` of optimizer step `step` on process `process`."""
    mb, accum = config.micro_batch_size, config.gradient_accumulation_steps
    start = ((step * accum + micro) * num_processes + process) * mb
    return range(start, start + mb)


def build_micro_batch(config: TrainConfig, examples: Sequence, order: DataOrder, step: int, micro: int, rank: int,
                      num_processes: int, pad_id: int) -> dict:
    """This process's share of micro-batch `micro` of optimizer step `step`: input_ids (after the pretraining
    random-length cut), prompt_lengths (SFT) and one noise generator per row.

    Everything depends only on (seed, step, micro, global positions), so the union over processes is exactly the
    micro-batch a single process with `num_processes` times the micro-batch size builds: SFT rows are padded to
    the longest row of the *global* micro-batch, the random-length cut is drawn from (seed, step, micro).
    """
    positions = micro_batch_positions(step, micro, config, rank, num_processes)
    rows = [examples[order.index(p)] for p in positions]
    generators = [_generator(config.seed, "noise", p) for p in positions]
    if config.task == "pretrain":
        input_ids = collate_pretraining(rows)["input_ids"]
        input_ids = random_length_cut(input_ids, probability=config.random_length_probability,
                                      generator=_generator(config.seed, "cut", step, micro))
        return {"input_ids": input_ids, "generators": generators}
    everyone = [examples[order.index(p)]
                for r in range(num_processes) for p in micro_batch_positions(step, micro, config, r, num_processes)]
    if config.sft_layout == "left":
        batch = collate_sft_left(rows, pad_id, response_length=config.sft_response_length,
                                 prompt_width=max(e.prompt_length for e in everyone))
        return {**batch, "generators": generators}
    pad_to = config.sft_pad_to if config.sft_pad_to is not None else max(len(e.input_ids) for e in everyone)
    batch = collate_sft(rows, pad_id, pad_to=pad_to)
    return {"input_ids": batch["input_ids"], "prompt_lengths": batch["prompt_lengths"], "generators": generators}


def micro_batch_loss(model, batch: dict, config: TrainConfig, mask_token_id: int, device=None):
    """The LLaDA loss of one micro-batch (`pretraining_objective` or `sft_objective`)."""
    input_ids = batch["input_ids"].to(device) if device is not None else batch["input_ids"]
    if config.task == "pretrain":
        return pretraining_objective(model, input_ids, mask_token_id=mask_token_id, eps=config.mask_eps,
                                     generator=batch["generators"])
    prompt_lengths = batch["prompt_lengths"].to(input_ids.device)
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = attention_mask.to(input_ids.device)
    return sft_objective(model, input_ids, prompt_lengths, mask_token_id=mask_token_id, eps=config.mask_eps,
                         generator=batch["generators"], attention_mask=attention_mask)


# --------------------------------------------------------------------------- checkpoints
def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    found = []
    for p in output_dir.glob("checkpoint-*"):
        if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def find_resume_checkpoint(config: TrainConfig) -> Optional[Path]:
    """The checkpoint to resume from (None to start fresh), per `config.resume`."""
    if config.resume == "never":
        return None
    if config.resume == "auto":
        found = _checkpoint_dirs(Path(config.output_dir))
        return found[-1] if found else None
    path = Path(config.resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"resume={config.resume}: not a complete checkpoint (no trainer_state.json)")
    return path


def save_hub_model(accelerator, model, tokenizer, folder: Path, config: TrainConfig, merge_lora: bool) -> None:
    """Write `folder` in the Hub layout: config.json, model.safetensors, generation_config.json, tokenizer."""
    from transformers import GenerationConfig

    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        if config.lora:
            unwrapped.save_pretrained(str(folder / "adapter"), state_dict=state_dict)
            if merge_lora and not config.load_in_4bit:
                import copy

                merged = copy.deepcopy(unwrapped).merge_and_unload()
                merged.save_pretrained(str(folder), safe_serialization=True)
                _write_generation_config(merged, folder, GenerationConfig)
        else:
            unwrapped.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)
            _write_generation_config(unwrapped, folder, GenerationConfig)
        tokenizer.save_pretrained(str(folder))
        _put_chat_template_in_config(folder, tokenizer)
    accelerator.wait_for_everyone()


def _write_generation_config(model, folder: Path, GenerationConfig) -> None:
    cfg = model.config
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                     pad_token_id=cfg.pad_token_id).save_pretrained(str(folder))


def _put_chat_template_in_config(folder: Path, tokenizer) -> None:
    """Keep the chat template in tokenizer_config.json too (where transformers 4.x and the Hub LLaDA have it)."""
    path = folder / "tokenizer_config.json"
    if path.is_file() and getattr(tokenizer, "chat_template", None):
        data = json.loads(path.read_text())
        data["chat_template"] = tokenizer.chat_template
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_checkpoint(accelerator, model, tokenizer, config: TrainConfig, step: int, extra: dict) -> Path:
    """checkpoint-N: Hub layout + accelerate state + trainer_state.json (last, marks the checkpoint complete)."""
    folder = Path(config.output_dir) / f"checkpoint-{step:07d}"
    save_hub_model(accelerator, model, tokenizer, folder, config, merge_lora=False)
    accelerator.save_state(str(folder / "accelerate_state"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "config": dataclasses.asdict(config), **extra}
        tmp = folder / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
        os.replace(tmp, folder / "trainer_state.json")
        if config.save_total_limit > 0:
            for old in _checkpoint_dirs(Path(config.output_dir))[: -config.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


# --------------------------------------------------------------------------- the loop
def _configure_deepspeed_batch(accelerator_state_plugin, config: TrainConfig, num_processes: int) -> None:
    """DeepSpeed wants its batch fields even though no dataloader goes through `accelerator.prepare`:
    fill train_micro_batch_size_per_gpu / gradient_accumulation_steps / train_batch_size from the recipe."""
    ds = accelerator_state_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    ds["gradient_accumulation_steps"] = config.gradient_accumulation_steps
    ds["train_batch_size"] = config.micro_batch_size * config.gradient_accumulation_steps * num_processes
    if ds.get("gradient_clipping") in (None, "auto"):
        ds["gradient_clipping"] = config.max_grad_norm if config.max_grad_norm > 0 else 0.0


def prepare_training(accelerator, model, config: TrainConfig, num_processes: int, log=print):
    """AdamW over the trainable parameters (weight decay on matrices only), `accelerator.prepare` (DeepSpeed's
    batch fields filled in first), then the state of the last checkpoint in `output_dir` restored if there is one.
    Returns (model, optimizer, the step to start from)."""
    from accelerate.utils import DistributedType

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed_batch(accelerator.state.deepspeed_plugin, config, num_processes)
    model, optimizer = accelerator.prepare(model, optimizer)
    start_step = 0
    resume_from = find_resume_checkpoint(config)
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "accelerate_state"))
        start_step = json.loads((resume_from / "trainer_state.json").read_text())["step"]
        log(f"resumed from {resume_from} at step {start_step}")
    return model, optimizer, start_step


def train(config: TrainConfig) -> Path:
    """Run training; returns the folder of the final model (`output_dir/final`)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs"))
    accel_kwargs: dict = dict(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              project_config=project, log_with=config.log_with or None)
    if config.mixed_precision is not None:
        accel_kwargs["mixed_precision"] = config.mixed_precision
    if not torch.cuda.is_available():
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            # DeepSpeed on CPU: without a GPU accelerate picks no process-group backend and would believe it runs
            # one process while DeepSpeed runs several; gloo makes both agree.
            accel_kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        else:
            # Several processes started by torchrun (configs/accelerate/cpu_2proc.yaml) join over gloo.
            accel_kwargs["cpu"] = True
    accelerator = Accelerator(**accel_kwargs)
    set_seed(config.seed)
    log = (lambda msg: print(f"[llada.train] {msg}", flush=True)) if accelerator.is_main_process else (lambda msg: None)
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    P, rank = accelerator.num_processes, accelerator.process_index
    log(f"{P} process(es), distributed={accelerator.distributed_type}, device={accelerator.device}, "
        f"mixed_precision={accelerator.mixed_precision}")

    tokenizer = load_tokenizer(config)
    ids = special_token_ids(tokenizer)
    examples, _ = load_training_data(config, tokenizer, log)
    order = DataOrder(len(examples), config.seed)
    total = total_optimizer_steps(config, len(examples), P)

    model = build_model(config, tokenizer, accelerator)
    if ids.mask != model.config.mask_token_id:
        raise ValueError(f"the tokenizer's mask id {ids.mask} differs from the model's mask_token_id "
                         f"{model.config.mask_token_id}")
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()  # transformers 5 name, falling back to the 4.x one
        if hasattr(model, "enable_input_require_grads") and config.lora:
            model.enable_input_require_grads()
    if config.lora:
        model = apply_lora(model, config)
    model.train()
    mask_id = model.config.mask_token_id
    model, optimizer, start_step = prepare_training(accelerator, model, config, P, log)
    if accelerator.is_main_process and config.log_with:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                for k, v in dataclasses.asdict(config).items()}
        accelerator.init_trackers(config.run_name, config=flat)
    elif config.log_with:
        accelerator.init_trackers(config.run_name)

    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in accelerator.unwrap_model(model).parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters; {len(examples)} examples; {total} optimizer steps of "
        f"{config.micro_batch_size * P * config.gradient_accumulation_steps} sequences")

    progress = tqdm(total=total, initial=start_step, disable=not accelerator.is_main_process, desc=config.task,
                    dynamic_ncols=True)
    t0, tokens_seen, last_loss = time.time(), 0, float("nan")
    running = torch.zeros(2, device=accelerator.device)  # (sum of micro-batch losses, count) since last log
    for step in range(start_step, total):
        lr = learning_rate_at(step, total, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        grad_norm = None
        for micro in range(config.gradient_accumulation_steps):
            batch = build_micro_batch(config, examples, order, step, micro, rank, P, ids.pad)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = micro_batch_loss(model, batch, config, mask_id, accelerator.device)
                input_ids = batch["input_ids"]
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running += torch.stack([out.loss.detach().float(), torch.ones((), device=accelerator.device)])
            tokens_seen += input_ids.numel() * P
        progress.update(1)
        done = step + 1
        if done % config.logging_steps == 0 or done == total:
            summed = accelerator.reduce(running.clone(), reduction="sum")
            last_loss = float(summed[0] / summed[1].clamp(min=1))
            running.zero_()
            elapsed = time.time() - t0
            metrics = {"loss": last_loss, "lr": lr, "tokens_per_s": tokens_seen / max(elapsed, 1e-9)}
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            if config.log_with:
                accelerator.log(metrics, step=done)
            if accelerator.is_main_process:  # plain-text metrics next to the tracker's
                with open(Path(config.output_dir) / "train_log.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": done, **metrics}) + "\n")
            progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            log(f"step {done}/{total} loss {last_loss:.4f} lr {lr:.3e} tok/s {metrics['tokens_per_s']:.0f}")
        if config.save_steps > 0 and done % config.save_steps == 0 and done < total:
            folder = save_checkpoint(accelerator, model, tokenizer, config, done, {"loss": last_loss})
            log(f"saved {folder}")
    progress.close()
    final = Path(config.output_dir) / "final"
    save_hub_model(accelerator, model, tokenizer, final, config, merge_lora=config.merge_lora)
    if accelerator.is_main_process:
        (final / "training_summary.json").write_text(json.dumps({
            "steps": total, "final_loss": last_loss, "wall_seconds": time.time() - t0,
            "processes": P, "task": config.task,
        }, indent=2) + "\n")
    log(f"final model in {final}")
    accelerator.end_training()
    return final


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`llada train RECIPE.yaml [key=value ...]` / `python -m llada.train ...`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="llada train",
        description="LLaDA pretraining / SFT from a YAML recipe; run it under `accelerate launch -m llada.train` "
                    "for several processes, DeepSpeed or FSDP.",
    )
    parser.add_argument("recipe", nargs="?", help="YAML recipe (TrainConfig fields)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-4 max_steps=100")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.from_yaml_and_overrides(args.recipe, args.overrides)
        train(config)
    except (ValueError, DataError) as err:
        print(f"llada train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
