"""VRPO trainer: `accelerate launch [--config_file configs/accelerate/X.yaml] -m alignment.train RECIPE.yaml [key=value ...]`.

Preference pairs (prompt / chosen / rejected; local json, jsonl, parquet or Hub ids) are scored by the
policy and a frozen reference with `alignment.vrpo`; everything else (optimiser, schedules, mixed
precision, DeepSpeed batch fields, Hub-layout checkpoints, resume after a crash, deterministic data order)
is the LLaDA trainer's (`llada.train`), reused here rather than written again.

Logged per logging step: loss, the VRPO and SFT parts, chosen / rejected rewards, reward margin and
accuracy, and the score's sample variance over `variance_repeats` re-draws on the step's first pair.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from llada.data import DataError, DataStats, read_rows
from llada.tokenization import special_token_ids
from llada.train import (
    DataOrder,
    TrainConfig,
    _generator,
    build_model,
    prepare_training,
    learning_rate_at,
    load_tokenizer,
    micro_batch_positions,
    save_checkpoint,
    save_hub_model,
    total_optimizer_steps,
)

from .data import tokenize_preferences
from .vrpo import VRPOConfig, check_compatible, draw_pair_masks, score_requests, vrpo_objective, vrpo_score


@dataclass
class VRPOTrainConfig(TrainConfig):
    """A VRPO run: the LLaDA `TrainConfig` fields plus the preference and estimator settings.

    Defaults follow the LLaDA 1.5 paper: lr 5e-7 after 15 warmup steps with cosine decay, AdamW weight decay
    0.01 and betas (0.9, 0.95), beta 0.2, budget n = 8 allocated as n_t = 8, n_yt = 1, antithetic sampling,
    and 0.05 x the SFT loss on the chosen response.
    """

    task: str = "vrpo"
    lr: float = 5e-7
    warmup_steps: int = 15
    lr_schedule: str = "cosine"
    weight_decay: float = 0.01
    seq_len: int = 1024  # longest prompt + response
    # ---- preference data
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    # ---- reference model
    reference_name_or_path: Optional[str] = None  # default: model_name_or_path (the SFT starting point)
    precompute_reference: bool = False  # score the reference once up front (same draws), then free it
    # ---- VRPO estimator and loss (alignment.vrpo.VRPOConfig)
    beta: float = 0.2
    budget: int = 8
    n_t: Optional[int] = None
    n_yt: Optional[int] = None
    optimal_allocation: bool = True
    antithetic: bool = True
    sft_weight: float = 0.05
    cfg_scale: float = 0.0
    variance_repeats: int = 4  # re-draws of the first pair per logging step for the score variance (0: off)
    run_name: str = "vrpo"
    output_dir: str = "runs/vrpo"

    def __post_init__(self) -> None:
        if self.task != "vrpo":
            raise ValueError(f"VRPOTrainConfig: task must be 'vrpo', got {self.task!r}")
        if self.model_name_or_path is None:
            raise ValueError("VRPOTrainConfig: model_name_or_path (the SFT model to align) is required")
        # TrainConfig validates the shared fields; its task check knows pretrain / sft only
        self.task = "sft"
        try:
            super().__post_init__()
        finally:
            self.task = "vrpo"
        self.vrpo  # validates the estimator settings

    @property
    def vrpo(self) -> VRPOConfig:
        return VRPOConfig(beta=self.beta, budget=self.budget, n_t=self.n_t, n_yt=self.n_yt,
                          optimal_allocation=self.optimal_allocation, antithetic=self.antithetic,
                          sft_weight=self.sft_weight, cfg_scale=self.cfg_scale)


def load_preference_data(config: VRPOTrainConfig, tokenizer, log=print):
    stats = DataStats()
    rows = read_rows(config.train_data, split=config.dataset_split, hub_config=config.dataset_config,
                     bad_rows=config.bad_rows, stats=stats)
    pairs = tokenize_preferences(rows, tokenizer, max_length=config.seq_len, prompt_field=config.prompt_field,
                                 chosen_field=config.chosen_field, rejected_field=config.rejected_field,
                                 too_long=config.too_long, bad_rows=config.bad_rows, stats=stats)
    if not pairs:
        raise DataError(f"the preference data {config.train_data} gave no usable pairs ({stats.rows} rows read, "
                        f"{stats.skipped_bad} malformed, {stats.skipped_too_long} too long)")
    log(f"data: {stats.rows} rows -> {len(pairs)} preference pairs; skipped {stats.skipped_bad} malformed, "
        f"{stats.skipped_too_long} too long; truncated {stats.truncated}")
    for problem in stats.problems:
        log(f"data: skipped: {problem}")
    return pairs


def _pair_generators(config: VRPOTrainConfig, positions: Sequence[int]) -> list[torch.Generator]:
    return [_generator(config.seed, "vrpo-draws", p) for p in positions]


def train(config: VRPOTrainConfig) -> Path:
    """Run VRPO; returns the folder of the final model (`output_dir/final`)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    import llada

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs"))
    kwargs: dict = dict(gradient_accumulation_steps=config.gradient_accumulation_steps, project_config=project,
                        log_with=config.log_with or None)
    if config.mixed_precision is not None:
        kwargs["mixed_precision"] = config.mixed_precision
    accelerator = Accelerator(**kwargs)
    set_seed(config.seed)
    log = (lambda m: print(f"[alignment.train] {m}", flush=True)) if accelerator.is_main_process else (lambda m: None)
    P, rank = accelerator.num_processes, accelerator.process_index
    vcfg = config.vrpo
    log(f"{P} process(es), device={accelerator.device}; VRPO beta={vcfg.beta} n={vcfg.budget} "
        f"(n_t={vcfg.n_t} x n_yt={vcfg.n_yt}) antithetic={vcfg.antithetic} sft_weight={vcfg.sft_weight}")

    tokenizer = load_tokenizer(config)
    ids = special_token_ids(tokenizer)
    pairs = load_preference_data(config, tokenizer, log)
    order = DataOrder(len(pairs), config.seed)
    total = total_optimizer_steps(config, len(pairs), P)

    model = build_model(config, tokenizer, accelerator)
    reference = llada.LLaDAModelLM.from_pretrained(config.reference_name_or_path or config.model_name_or_path,
                                                   dtype=torch.float32)
    check_compatible(model, reference)
    reference.requires_grad_(False).eval().to(accelerator.device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.lora:
        from llada.train import apply_lora

        model = apply_lora(model, config)
    model.train()
    model, optimizer, start_step = prepare_training(accelerator, model, config, P, log)

    # Reference ELBOs up front (same draws as in training: the draws of a pair depend only on its position).
    precomputed: dict[int, torch.Tensor] = {}
    if config.precompute_reference:
        with torch.no_grad():
            for step in range(start_step, total):
                for micro in range(config.gradient_accumulation_steps):
                    positions = list(micro_batch_positions(step, micro, config, rank, P))
                    batch = [pairs[order.index(p)].as_tuple() for p in positions]
                    requests, _, ref_draws = draw_pair_masks(batch, vcfg, _pair_generators(config, positions))
                    values = score_requests(reference, requests, ref_draws, vcfg).cpu()
                    for j, p in enumerate(positions):
                        precomputed[p] = values[2 * j:2 * j + 2]
        del reference
        reference = None
        log(f"precomputed {len(precomputed)} reference ELBO pairs; reference model freed")

    if config.log_with:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in dataclasses.asdict(config).items()}
        accelerator.init_trackers(config.run_name, config=flat if accelerator.is_main_process else None)
    progress = tqdm(total=total, initial=start_step, disable=not accelerator.is_main_process, desc="vrpo",
                    dynamic_ncols=True)
    t0 = time.time()
    sums = torch.zeros(6, device=accelerator.device)  # loss, vrpo, sft, margin, accuracy, count
    last: dict = {}
    for step in range(start_step, total):
        lr = learning_rate_at(step, total, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        first_pair = None
        for micro in range(config.gradient_accumulation_steps):
            positions = list(micro_batch_positions(step, micro, config, rank, P))
            batch = [pairs[order.index(p)].as_tuple() for p in positions]
            first_pair = first_pair or batch[0]
            ref_values = torch.cat([precomputed[p] for p in positions]) if precomputed else None
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = vrpo_objective(model, reference, batch, vcfg, generator=_pair_generators(config, positions),
                                         sft_generators=[_generator(config.seed, "vrpo-sft", p) for p in positions],
                                         reference_values=ref_values, pad_id=ids.pad)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums += torch.stack([out.loss.detach().float(), out.vrpo_loss.float(),
                                 (out.sft_loss if out.sft_loss is not None else torch.zeros(())).float().to(sums.device),
                                 out.reward_margin.mean().float().to(sums.device),
                                 out.reward_accuracy.to(sums.device), torch.ones((), device=sums.device)])
        progress.update(1)
        done = step + 1
        if done % config.logging_steps == 0 or done == total:
            summed = accelerator.reduce(sums.clone(), reduction="sum")
            n = summed[5].clamp(min=1)
            last = {"loss": float(summed[0] / n), "vrpo_loss": float(summed[1] / n), "sft_loss": float(summed[2] / n),
                    "reward_margin": float(summed[3] / n), "reward_accuracy": float(summed[4] / n), "lr": lr}
            sums.zero_()
            if config.variance_repeats > 1 and reference is not None:
                last["score_variance"] = score_sample_variance(accelerator.unwrap_model(model), reference, first_pair,
                                                               vcfg, config.variance_repeats, seed=config.seed + done)
            if config.log_with:
                accelerator.log(last, step=done)
            progress.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['reward_accuracy']:.2f}")
            log(f"step {done}/{total} " + " ".join(f"{k} {v:.4g}" for k, v in last.items()))
        if config.save_steps > 0 and done % config.save_steps == 0 and done < total:
            save_checkpoint(accelerator, model, tokenizer, config, done, last)
    progress.close()
    final = Path(config.output_dir) / "final"
    save_hub_model(accelerator, model, tokenizer, final, config, merge_lora=config.merge_lora)
    if accelerator.is_main_process:
        (final / "training_summary.json").write_text(json.dumps(
            {"steps": total, "wall_seconds": time.time() - t0, "processes": P, "task": "vrpo", **last}, indent=2) + "\n")
    log(f"final model in {final}")
    accelerator.end_training()
    return final


@torch.no_grad()
def score_sample_variance(policy, reference, pair, config: VRPOConfig, repeats: int, seed: int) -> float:
    """Sample variance of the VRPO score of one pair over `repeats` independent re-draws."""
    scores = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed * 1000 + r)
        requests, draws, ref_draws = draw_pair_masks([pair], config, g)
        pol = score_requests(policy, requests, draws, config)
        ref = score_requests(reference, requests, ref_draws, config).to(pol.device)
        scores.append(float(vrpo_score(pol[0], ref[0], pol[1], ref[1], config.beta)))
    return float(torch.tensor(scores, dtype=torch.float64).var())


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="alignment.train", description="VRPO from a YAML recipe; run it under "
                                     "`accelerate launch -m alignment.train` for several processes.")
    parser.add_argument("recipe", nargs="?", help="YAML file of VRPOTrainConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    recipe = args.recipe
    overrides = list(args.overrides)
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides.insert(0, recipe)
        recipe = None
    config = VRPOTrainConfig.from_yaml_and_overrides(recipe, overrides)
    train(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
