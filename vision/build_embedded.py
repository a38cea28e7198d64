"""Rebuild the embedded LLaDA-V (`llada/embedded/llada-mini-vision`) from scratch on this CPU.

    python -m vision.build_embedded [--work runs/embedded_vision] [--install] [--skip-train] [--micro]

1. `vision.shapes` writes the seeded synthetic image-question corpus (WORK/corpus).
2. Stage 1 (connector only), the stage 2 warm-up (everything, the random tower included, on the colour questions
   alone: WORK/corpus/stage2_warmup.json) and stage 2 (every question type), each by the real command
       nice -n 10 accelerate launch --config_file configs/accelerate/cpu.yaml -m vision.train \\
           configs/recipes/embedded_vision_stage{1,2}.yaml key=value ...
   on top of the embedded text model `llada/embedded/llada-mini-instruct` (its weights and tokenizer are copied
   into the new model, which is self-contained; stage 1 adds the shape and position words to the tokenizer).
   Commands and wall times go to WORK/build_log.json.
3. `evaluate_heldout` measures held-out accuracy per question type with the shared sampler (LLaDA-V
   generation: stop at `<|eot_id|>`, EOS / BOS / header ids suppressed) and `vision.shapes.check_answer`.
4. --install copies the final model into llada/embedded/llada-mini-vision/ (Hub layout: config.json with its
   `vision_config`, model.safetensors, tokenizer files with the chat template, preprocessor_config.json for the
   SigLIP image processor, generation_config.json) with a model card README.md; it also rewrites the demo's
   bundled examples (demo/examples/) and the data of the lm-eval task `llada_shapes` (eval/tasks/data/shapes/).

`--micro` runs the whole pipeline on a handful of images and steps (seconds; the tests use it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"
INSTALL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json")
#: the sampler settings the held-out accuracy is measured with (and the demo / lm-eval task use by default)
EVAL_SETTINGS = dict(gen_length=16, steps=16, block_length=16, temperature=0.0, remasking="low_confidence")


@dataclasses.dataclass
class BuildConfig:
    """The build: corpus size, the two stages' steps, where things go."""

    work: str = "runs/embedded_vision"
    language_model: str = "llada/embedded/llada-mini-instruct"
    stage1_steps: int = 150
    stage2_warmup_steps: int = 300  # stage 2 on the colour questions alone first (0: no warm-up)
    stage2_steps: int = 2500
    micro_batch_size: int = 16
    threads: int = 1
    nice: int = 10
    train_images: int = 2000
    heldout_images: int = 200
    heldout_per_type: int = 50
    seed: int = 20250522
    eval_batch_size: int = 20
    extra_overrides: tuple = ()

    @classmethod
    def micro(cls, work: str) -> "BuildConfig":
        """A few images and steps: the whole pipeline in seconds (for tests)."""
        return cls(work=work, stage1_steps=2, stage2_warmup_steps=2, stage2_steps=3, micro_batch_size=2, train_images=6, heldout_images=4,
                   heldout_per_type=1, eval_batch_size=4, nice=0)


def source_commit(path: str) -> Optional[str]:
    """The last commit that changed `path` inside this repository (None outside it, or without git)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)], cwd=REPO, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_logged(cmd: Sequence[str], log: dict, name: str, env: Optional[dict] = None) -> None:
    """Run a command from the repository root; its command line and wall time go to `log[name]`."""
    printable = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"[vision.build_embedded] {name}: {printable}", flush=True)
    start = time.time()
    subprocess.run([str(c) for c in cmd], cwd=REPO, check=True, env={**os.environ, **(env or {})})
    log[name] = {"command": printable, "wall_seconds": round(time.time() - start, 1)}


def stage_command(config: BuildConfig, stage: int, corpus: Path, out: Path, model_in: Optional[Path],
                  warmup: bool = False) -> list[str]:
    """The `accelerate launch -m vision.train` command line of one stage (`warmup`: stage 2 on the warm-up rows)."""
    recipe = RECIPES / f"embedded_vision_stage{stage}.yaml"
    data = corpus / ("stage2_warmup.json" if warmup else f"stage{stage}.json")
    steps = config.stage1_steps if stage == 1 else config.stage2_warmup_steps if warmup else config.stage2_steps
    cmd = [] if config.nice <= 0 else ["nice", "-n", str(config.nice)]
    cmd += [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / "cpu.yaml"), "-m", "vision.train", str(recipe),
            f"train_data=[{data}]", f"image_folder={corpus}", f"output_dir={out}", f"max_steps={steps}",
            f"micro_batch_size={config.micro_batch_size}", f"num_threads={config.threads}"]
    if stage == 1:
        cmd.append(f"language_model={config.language_model}")
    else:
        cmd.append(f"model_name_or_path={model_in}")
    cmd += list(config.extra_overrides)
    return cmd


# ------------------------------------------------------------------------------------------ evaluation
def answer_batch(model: Any, tokenizer: Any, questions: Sequence[str], images: Sequence[Any],
                 settings: Optional[dict] = None) -> list[str]:
    """Answers to one question per image, generated as one left-padded batch (llava_llada template, default
    system prompt, stop at `<|eot_id|>`)."""
    import torch

    from llada.tokenization import left_pad
    from sampling import SamplerConfig

    from .conversation import build_messages, encode_prompt
    from .generation import generate

    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} question(s) but {len(images)} image(s): give one image per question")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
    prompts = [encode_prompt(tokenizer, build_messages(q), image_token_index=model.config.image_token_index)
               for q in questions]
    device = model.get_input_embeddings().weight.device
    ids, mask = left_pad(prompts, pad, device=device)
    cfg = SamplerConfig(**{**EVAL_SETTINGS, **(settings or {})})
    with torch.no_grad():
        result = generate(model, ids, list(images), attention_mask=None if bool(mask.all()) else mask, config=cfg,
                          stop_sequences=["<|eot_id|>"], tokenizer=tokenizer, return_dict=True)
    return [tokenizer.decode(result.sequences[b, : int(result.lengths[b])].tolist(), skip_special_tokens=True).strip()
            for b in range(len(questions))]


def evaluate_heldout(model: Any, tokenizer: Any, heldout_json: str | Path, image_folder: str | Path, *,
                     settings: Optional[dict] = None, batch_size: int = 20, limit: Optional[int] = None) -> dict:
    """Held-out accuracy per question type: {"per_type": {type: {"correct", "total", "accuracy"}}, "overall",
    "settings", "samples": [...]} (answers scored by `vision.shapes.check_answer`)."""
    from tqdm.auto import tqdm

    from .shapes import check_answer

    rows = json.loads(Path(heldout_json).read_text())
    if limit is not None:
        rows = rows[:limit]
    samples = []
    for start in tqdm(range(0, len(rows), batch_size), desc="held-out", leave=False):
        chunk = rows[start:start + batch_size]
        answers = answer_batch(model, tokenizer, [r["question"] for r in chunk],
                               [str(Path(image_folder) / r["image"]) for r in chunk], settings)
        for r, a in zip(chunk, answers):
            samples.append({"id": r["id"], "type": r["type"], "question": r["question"], "expected": r["answer"],
                            "answer": a, "correct": check_answer(r["type"], r["answer"], a)})
    per_type: dict[str, dict] = {}
    for s in samples:
        t = per_type.setdefault(s["type"], {"correct": 0, "total": 0})
        t["correct"] += int(s["correct"])
        t["total"] += 1
    for t in per_type.values():
        t["accuracy"] = t["correct"] / t["total"]
    total = sum(t["total"] for t in per_type.values())
    overall = sum(t["correct"] for t in per_type.values()) / total if total else float("nan")
    return {"per_type": per_type, "overall": overall, "settings": {**EVAL_SETTINGS, **(settings or {})},
            "samples": samples}


#: chance accuracy of a uniform guess among the labels of each type
CHANCE = {"colour": 1 / 6, "shape": 1 / 4, "count": 1 / 3, "position": 1 / 4}


# ------------------------------------------------------------------------------------------ install
def image_processor_config(model_config: Any) -> dict:
    """preprocessor_config.json of the SigLIP image processor for the processing the model implies
    (`ImageProcessingConfig.from_model_config`: resize to the crop size, x / 255, the tower's mean and std), as Hub
    SigLIP checkpoints ship it."""
    from .image_processing import ImageProcessingConfig

    cfg = ImageProcessingConfig.from_model_config(model_config)
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": cfg.image_size, "width": cfg.image_size},
        "resample": cfg.resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(cfg.image_mean),
        "image_std": list(cfg.image_std),
        "do_convert_rgb": True,
    }


def model_card(final_dir: Path, log: dict, accuracy: Optional[dict], config: BuildConfig) -> str:
    from .configuration_llava_llada import LlavaLLaDAConfig

    cfg = LlavaLLaDAConfig.from_pretrained(str(final_dir))
    vc = cfg.vision_config
    runs = (("stage1", "stage 1 (connector)"), ("stage2_warmup", "stage 2 warm-up (colour questions)"),
            ("stage2", "stage 2 (every question type)"))
    summaries = {name: json.loads((Path(log[name]["output"]) / "training_summary.json").read_text())
                 for name, _ in runs if name in log and "output" in log[name]}
    lm_commit = f" as of commit {log['language_model_commit']}" if log.get("language_model_commit") else ""
    lines = [
        "# llada-mini-vision",
        "",
        "A tiny LLaDA-V (model_type `llava_llada`) trained by this project on its seeded synthetic shapes corpus "
        "(`vision.shapes`: coloured circles, squares, triangles and diamonds on a 64 x 64 canvas), the default vision "
        "model of the suite (`llada generate --image`, the demo's vision tab, the lm-eval task `llada_shapes`). It "
        "answers what colour, which shape, how many and where; it is not a general-purpose model.",
        "",
        f"- vision tower: SigLIP (transformers `SiglipVisionModel`, random init), {vc.image_size} x {vc.image_size} "
        f"input, patch {vc.patch_size} ({cfg.tokens_per_side ** 2} features per image), width {vc.hidden_size}, "
        f"{vc.num_hidden_layers} layers (features of layer {cfg.mm_vision_select_layer}, so "
        f"{vc.num_hidden_layers - 1} are kept), image_aspect_ratio `{cfg.image_aspect_ratio}`, one image_newline row",
        f"- connector: `{cfg.mm_projector_type}` ({cfg.mm_hidden_size} -> {cfg.d_model} -> {cfg.d_model})",
        f"- language model: the embedded `llada-mini-instruct`{lm_commit} (d_model {cfg.d_model}, {cfg.n_layers} layers, vocabulary "
        f"{cfg.vocab_size}; mask id {cfg.mask_token_id}, EOS {cfg.eos_token_id}), weights copied in and trained in stage 2; "
        "the tokenizer adds the shape and position names as single tokens (`vision.shapes.DOMAIN_TOKENS`)",
        "- prompt: the llava_llada template (LLaDA chat template with the LLaDA-V system prompt), `<image>` before the "
        "question",
    ]
    for name, label in runs:
        entry = log.get(name)
        if entry:
            summ = summaries.get(name, {})
            lines.append(f"- {label}: {summ.get('steps', '?')} steps, final loss {summ.get('final_loss', float('nan')):.4f}, "
                         f"{entry['wall_seconds']:.0f} s wall on CPU (1 thread): `{entry['command']}`")
    if accuracy:
        st = accuracy["settings"]
        lines += ["", f"Held-out accuracy ({sum(t['total'] for t in accuracy['per_type'].values())} questions on new "
                  f"images; sampler: temperature {st['temperature']}, {st['remasking']} remasking, gen_length "
                  f"{st['gen_length']}, steps {st['steps']}, block_length {st['block_length']}, stop at `<|eot_id|>`):", "",
                  "| question type | correct | accuracy | chance |", "|---|---|---|---|"]
        for t, v in accuracy["per_type"].items():
            lines.append(f"| {t} | {v['correct']}/{v['total']} | {100 * v['accuracy']:.1f}% | {100 * CHANCE.get(t, 0):.0f}% |")
        lines.append(f"| all | | {100 * accuracy['overall']:.1f}% | |")
        weak = [t for t, v in accuracy["per_type"].items() if v["accuracy"] < CHANCE.get(t, 0) + 0.1]
        if weak:
            lines += ["", f"Not learned by this build (within 10 points of chance): {', '.join(weak)}. Ask it about "
                      "colours and counts; see bench/results/vision_embedded.md for what was tried."]
    lines += ["", "Use:", "", "    llada generate --image demo/examples/example_1_1-shape.png --prompt 'What colour is the "
              "shape?' --gen-length 16 --steps 16 --block-length 16", "",
              f"Rebuild from scratch: `python -m vision.build_embedded --install` ({datetime.date.today().isoformat()}).", ""]
    return "\n".join(lines)


def install(final_dir: Path, dest: Path, card: str) -> Path:
    """Copy the Hub-layout files of `final_dir` into `dest` (replacing it), plus the image processor config,
    a generation config and the model card."""
    from .configuration_llava_llada import LlavaLLaDAConfig

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in INSTALL_FILES:
        if (final_dir / name).is_file():
            shutil.copy2(final_dir / name, dest / name)
    os.chmod(dest / "model.safetensors", 0o644)
    cfg = LlavaLLaDAConfig.from_pretrained(str(final_dir))
    (dest / "preprocessor_config.json").write_text(json.dumps(image_processor_config(cfg), indent=2) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "mask_token_id": cfg.mask_token_id, **{k: v for k, v in EVAL_SETTINGS.items() if k != "remasking"},
    }, indent=2) + "\n")
    (dest / "README.md").write_text(card)
    return dest


# ------------------------------------------------------------------------------------------ main
def build(config: BuildConfig, *, skip_train: bool = False, install_to: Optional[Path] = None,
          write_assets: bool = False) -> dict:
    """Corpus -> stage 1 -> stage 2 -> held-out accuracy (-> install). Returns the build log."""
    from .shapes import ShapesConfig, write_corpus

    work = Path(config.work)
    if not work.is_absolute():
        work = REPO / work
    work.mkdir(parents=True, exist_ok=True)
    log: dict = {"date": datetime.date.today().isoformat(), "config": dataclasses.asdict(config)}
    corpus = work / "corpus"
    shapes = ShapesConfig(train_images=config.train_images, heldout_images=config.heldout_images,
                          heldout_per_type=config.heldout_per_type, seed=config.seed)
    start = time.time()
    write_corpus(corpus, shapes)
    log["corpus"] = {"dir": str(corpus), "wall_seconds": round(time.time() - start, 1), **dataclasses.asdict(shapes)}
    stage1, warmup, stage2 = work / "stage1", work / "stage2_warmup", work / "stage2"
    previous = work / "build_log.json"
    if skip_train and previous.is_file():  # the training runs' commands and times, for the model card
        old = json.loads(previous.read_text())
        log.update({k: old[k] for k in ("stage1", "stage2_warmup", "stage2", "language_model_commit") if k in old})
    log.setdefault("language_model_commit", source_commit(config.language_model))
    if not skip_train:
        run_logged(stage_command(config, 1, corpus, stage1, None), log, "stage1")
        log["stage1"]["output"] = str(stage1 / "final")
        start_from = stage1 / "final"
        if config.stage2_warmup_steps > 0:
            run_logged(stage_command(config, 2, corpus, warmup, start_from, warmup=True), log, "stage2_warmup")
            log["stage2_warmup"]["output"] = start_from = str(warmup / "final")
        run_logged(stage_command(config, 2, corpus, stage2, Path(start_from)), log, "stage2")
        log["stage2"]["output"] = str(stage2 / "final")
    final = stage2 / "final"
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"no trained model at {final}: run without --skip-train first")

    import torch

    from .cli import load

    torch.set_num_threads(max(1, config.threads))
    model, tokenizer, _ = load(str(final), "cpu", "float32")
    start = time.time()
    accuracy = evaluate_heldout(model, tokenizer, corpus / "heldout.json", corpus, batch_size=config.eval_batch_size)
    log["evaluation"] = {"wall_seconds": round(time.time() - start, 1), "overall": accuracy["overall"],
                         "per_type": accuracy["per_type"], "settings": accuracy["settings"]}
    (work / "heldout_samples.json").write_text(json.dumps(accuracy["samples"], indent=1) + "\n")
    for t, v in accuracy["per_type"].items():
        print(f"[vision.build_embedded] held-out {t}: {v['correct']}/{v['total']} = {100 * v['accuracy']:.1f}%")
    if install_to is not None:
        dest = install(final, Path(install_to), model_card(final, log, accuracy, config))
        log["installed"] = str(dest)
        print(f"[vision.build_embedded] installed {dest}")
    if write_assets:
        from .shapes import write_examples, write_lm_eval_task

        examples = REPO / "demo" / "examples"
        for old in examples.glob("example_*.png"):
            old.unlink()
        log["examples"] = [str(p) for p in write_examples(examples)]
        log["lm_eval_task"] = str(write_lm_eval_task(REPO / "eval" / "tasks" / "data" / "shapes"))
    (work / "build_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: Optional[Sequence[str]] = None) -> int:
    from llada.defaults import embedded_model_path

    ap = argparse.ArgumentParser(prog="python -m vision.build_embedded", description=__doc__.strip().splitlines()[0])
    ap.add_argument("--work", default=BuildConfig.work, help="working folder (corpus, stage outputs, logs)")
    ap.add_argument("--install", action="store_true", help="install into llada/embedded/ and rewrite the demo "
                    "examples and the lm-eval task data")
    ap.add_argument("--skip-train", action="store_true", help="evaluate (and install) an existing WORK/stage2/final")
    ap.add_argument("--micro", action="store_true", help="a few images and steps (seconds): checks the pipeline")
    ap.add_argument("--language-model", default=BuildConfig.language_model)
    ap.add_argument("--stage1-steps", type=int, default=None)
    ap.add_argument("--stage2-warmup-steps", type=int, default=None, help="stage 2 on the colour questions first (0: none)")
    ap.add_argument("--stage2-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=BuildConfig.threads)
    ap.add_argument("--nice", type=int, default=None, help="niceness of the training processes (default 10)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for both vision.train stages")
    args = ap.parse_args(argv)
    config = BuildConfig.micro(args.work) if args.micro else BuildConfig(work=args.work)
    config = dataclasses.replace(config, language_model=args.language_model, threads=args.threads,
                                 extra_overrides=tuple(args.overrides))
    if args.stage1_steps is not None:
        config = dataclasses.replace(config, stage1_steps=args.stage1_steps)
    if args.stage2_warmup_steps is not None:
        config = dataclasses.replace(config, stage2_warmup_steps=args.stage2_warmup_steps)
    if args.stage2_steps is not None:
        config = dataclasses.replace(config, stage2_steps=args.stage2_steps)
    if args.nice is not None:
        config = dataclasses.replace(config, nice=args.nice)
    if args.micro and args.install:
        ap.error("--micro builds a throw-away model: it cannot be installed")
    total = time.time()
    log = build(config, skip_train=args.skip_train,
                install_to=embedded_model_path("vision") if args.install else None, write_assets=args.install)
    print(f"[vision.build_embedded] done in {time.time() - total:.0f} s; log in {Path(config.work) / 'build_log.json'}")
    return 0 if log else 1


if __name__ == "__main__":
    raise SystemExit(main())
