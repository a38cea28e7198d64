"""Rebuild the embedded default models from scratch: corpus -> tokenizer -> pretraining -> SFT -> evaluation.

    python -m llada.build_embedded [--work runs/embedded] [--install] [--skip-train]

1. `llada.corpus` writes the seeded synthetic corpus (pretrain.jsonl, sft_train.jsonl, heldout.jsonl).
2. `train_tokenizer` trains a byte-level BPE (`tokenizers`) on it, with LLaDA's special tokens and the
   Instruct chat template, saved as a transformers tokenizer (loadable offline by AutoTokenizer).
3. Pretraining of llada-mini-base, then SFT of llada-mini-instruct in three stages (the easy families, then
   everything, then everything with the compare family repeated; see configs/recipes/embedded_sft_stage1.yaml
   and embedded_sft_stage3.yaml; the model of stage 3 is llada-mini-instruct), each by the real command
       accelerate launch --config_file configs/accelerate/cpu.yaml -m llada.train configs/recipes/<recipe>.yaml ...
   (commands and wall times are written to WORK/build_log.json).
4. `bench/embedded_accuracy.py` measures held-out accuracy per task family with the sampler (a separate
   script: `llada` does not import `sampling`).
5. --install copies both final models (Hub layout) into llada/embedded/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .corpus import CorpusConfig, write_corpus
from .defaults import EMBEDDED_DIR, EMBEDDED_MODELS
from .tokenization import (
    BOS_TOKEN, EOS_TOKEN, LLADA_CHAT_TEMPLATE, MASK_TOKEN, SPECIAL_TOKENS, apply_chat_template,
)

REPO = Path(__file__).resolve().parents[1]


def _tokenizer_training_texts(corpus_dir: Path):
    """Pretraining documents, plus every SFT conversation rendered with the chat template (so role names and
    the template's newlines get merges too)."""

    with open(corpus_dir / "pretrain.jsonl", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["text"]
    with open(corpus_dir / "sft_train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            for m in json.loads(line)["messages"]:
                yield f"{m['role']}\n\n{m['content']}"


def train_tokenizer(corpus_dir: str | Path, out_dir: str | Path, *, vocab_size: int = 1024):
    """Byte-level BPE on the corpus; digits are always single tokens (arithmetic stays learnable).

    Special tokens (LLaDA's, ids differ from the 8B tokenizer): <|startoftext|> BOS, <|endoftext|> EOS = pad,
    <|mdm_mask|> mask, <|start_header_id|>, <|end_header_id|>, <|eot_id|>. The Instruct chat template goes
    into tokenizer_config.json (and chat_template.jinja). Returns the saved tokenizer, reloaded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_training_texts(corpus_dir), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, mask_token=MASK_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS[3:]), chat_template=LLADA_CHAT_TEMPLATE,
        model_max_length=4096,
    )
    fast.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    data = json.loads(config_path.read_text())
    data["chat_template"] = LLADA_CHAT_TEMPLATE
    config_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    ids = apply_chat_template(reloaded, [{"role": "user", "content": "What is 12 + 30?"}])
    if reloaded.decode(ids) != (f"{BOS_TOKEN}<|start_header_id|>user<|end_header_id|>\n\nWhat is 12 + 30?<|eot_id|>"
                                f"<|start_header_id|>assistant<|end_header_id|>\n\n"):
        raise RuntimeError(f"tokenizer round trip failed: {reloaded.decode(ids)!r}")
    return reloaded


def run_logged(cmd: Sequence[str], log: dict, name: str, env: Optional[dict] = None) -> None:
    """Run `cmd`, recording the command and its wall time in `log[name]`."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(list(cmd), check=True, cwd=REPO, env=env)
    command = shlex.join(cmd).replace(sys.executable, "python").replace(str(REPO) + "/", "")
    log[name] = {"command": command, "wall_seconds": round(time.time() - start, 1),
                 "date": time.strftime("%Y-%m-%d")}


def install(final_dir: Path, role: str) -> Path:
    """Copy a final model folder (Hub layout) into llada/embedded/<name>/ (without training state)."""
    target = EMBEDDED_DIR / EMBEDDED_MODELS[role]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for f in final_dir.iterdir():
        if f.is_file() and f.name != "training_summary.json":
            shutil.copy2(f, target / f.name)
            (target / f.name).chmod(0o644)
    return target


def model_card(role: str, final_dir: Path, log: dict, accuracy: Optional[dict]) -> str:
    """README.md of an embedded model: what it is, how it was trained (commands, wall times), its accuracy."""
    config = json.loads((final_dir / "config.json").read_text())
    summary_path = final_dir / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    stage = "pretrain" if role == "base" else "sft"
    lines = [
        f"# {EMBEDDED_MODELS[role]}",
        "",
        "A small LLaDA masked diffusion model trained by this project on its seeded synthetic corpus "
        "(`llada.corpus`), the default model of the suite when none is named. Not a general-purpose model.",
        "",
        f"- architecture: LLaDA (model_type `llada`), d_model {config['d_model']}, {config['n_layers']} layers, "
        f"{config['n_heads']} heads, SwiGLU {config['mlp_hidden_size']}, vocabulary {config['vocab_size']} "
        f"(byte-level BPE with LLaDA's special tokens; mask id {config['mask_token_id']}, EOS {config['eos_token_id']})",
        f"- training: {stage}{' (last stage, stage 3)' if role == 'instruct' else ''}, {summary.get('steps', '?')} "
        f"optimizer steps, final loss "
        f"{summary.get('final_loss', float('nan')):.4f}, on CPU",
    ]
    for key in (["pretrain"] if role == "base" else ["pretrain", "sft1", "sft", "sft3"]):
        if key in log:
            lines += [f"- {key} command: `{log[key]['command']}`",
                      f"- {key} wall time: {log[key]['wall_seconds']:.0f} s ({log[key]['date']}, CPU, 1 thread)"]
    if role == "instruct":
        lines += ["- chat: the LLaDA Instruct chat template; trained for the sampler layout prompt + 32 positions "
                  "(`sft_layout: left`, `sft_response_length: 32`): generate with gen_length 32 (steps 32, "
                  "block_length 32) for the measured accuracy"]
    if accuracy:
        settings = accuracy["settings"]
        lines += ["", f"Held-out accuracy (exact sampler, temperature 0, low-confidence remasking, gen_length "
                      f"{settings['gen_length']}, steps {settings['steps']}, block_length {settings['block_length']}):",
                  "", "| family | correct | accuracy |", "|---|---|---|"]
        for family, r in sorted(accuracy["per_family"].items()):
            lines.append(f"| {family} | {r['correct']}/{r['total']} | {100 * r['accuracy']:.1f}% |")
    lines += ["", "Rebuild from scratch: `python -m llada.build_embedded --install`.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llada.build_embedded", description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="runs/embedded", help="working folder (corpus, tokenizer, runs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training process (1: robust when the CPU is shared)")
    parser.add_argument("--install", action="store_true", help="copy the models into llada/embedded/")
    parser.add_argument("--stages", default="corpus,tokenizer,pretrain,sft1,sft,sft3,eval",
                        help="comma-separated subset of corpus,tokenizer,pretrain,sft1,sft,sft3,eval")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    work = (REPO / args.work) if not os.path.isabs(args.work) else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "build_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    corpus_dir, tok_dir = work / "corpus", work / "tokenizer"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu.yaml",
              "-m", "llada.train"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))

    if "corpus" in stages:
        start = time.time()
        write_corpus(corpus_dir, CorpusConfig())
        log["corpus"] = {"command": f"python -m llada.corpus {corpus_dir}", "wall_seconds": round(time.time() - start, 1)}
    if "tokenizer" in stages:
        start = time.time()
        tok = train_tokenizer(corpus_dir, tok_dir)
        log["tokenizer"] = {"vocab": len(tok), "wall_seconds": round(time.time() - start, 1)}
    if "pretrain" in stages:
        run_logged(launch + ["configs/recipes/embedded_pretrain.yaml", f"output_dir={work / 'base'}",
                             f"train_data=[{corpus_dir / 'pretrain.jsonl'}]", f"tokenizer_name_or_path={tok_dir}",
                             f"num_threads={args.threads}"], log, "pretrain", env)
    if "sft1" in stages:
        run_logged(launch + ["configs/recipes/embedded_sft_stage1.yaml", f"output_dir={work / 'instruct_stage1'}",
                             f"train_data=[{corpus_dir / 'sft_stage1.jsonl'}]",
                             f"model_name_or_path={work / 'base' / 'final'}", f"num_threads={args.threads}"],
                   log, "sft1", env)
    if "sft" in stages:
        run_logged(launch + ["configs/recipes/embedded_sft.yaml", f"output_dir={work / 'instruct'}",
                             f"train_data=[{corpus_dir / 'sft_train.jsonl'}]",
                             f"model_name_or_path={work / 'instruct_stage1' / 'final'}", f"num_threads={args.threads}"],
                   log, "sft", env)
    if "sft3" in stages:
        run_logged(launch + ["configs/recipes/embedded_sft_stage3.yaml", f"output_dir={work / 'instruct_stage3'}",
                             f"train_data=[{corpus_dir / 'sft_stage3.jsonl'}]",
                             f"model_name_or_path={work / 'instruct' / 'final'}", f"num_threads={args.threads}"],
                   log, "sft3", env)
    log_path.write_text(json.dumps(log, indent=2) + "\n")
    if "eval" in stages:
        run_logged([sys.executable, "bench/embedded_accuracy.py", str(work / "instruct_stage3" / "final"),
                    "--heldout", str(corpus_dir / "heldout.jsonl"), "--out", str(work / "eval_instruct.json"),
                    "--threads", str(args.threads)], log, "eval", env)
    log_path.write_text(json.dumps(log, indent=2) + "\n")
    if args.install:
        eval_path = work / "eval_instruct.json"
        accuracy = json.loads(eval_path.read_text()) if eval_path.is_file() else None
        for role, sub in (("base", "base"), ("instruct", "instruct_stage3")):
            target = install(work / sub / "final", role)
            if role == "instruct":  # the sampler settings the model was trained for (sft_response_length)
                gen = json.loads((target / "generation_config.json").read_text())
                gen.update(gen_length=32, steps=32, block_length=32)
                (target / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
            (target / "README.md").write_text(model_card(role, work / sub / "final", log,
                                                         accuracy if role == "instruct" else None))
            print(f"installed {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
