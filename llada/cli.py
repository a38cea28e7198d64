"""The `llada` command line: one entry point, one subcommand per job.

    llada generate   sample from a model (sampling.cli)
    llada chat       multi-turn chat in the terminal (sampling.cli)
    llada train      pretraining / SFT (llada.train; under `accelerate launch -m llada.train` for many processes)
    llada vrpo       VRPO alignment (alignment.train; `accelerate launch -m alignment.train` for many processes)
    llada vrpo-variance / vrpo-collect   VRPO variance table / preference pairs from verifiable tasks
    llada eval       lm-eval with the LLaDA adapter registered (eval.__main__)
    llada demo       the Gradio chat and vision demo (demo.app)
    llada info       print what a checkpoint is (config, parameters, special ids)

The library code in `llada/` never imports the other packages; this dispatcher is the top of the
dependency graph and imports each subcommand's module only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

#: subcommand -> ("module:function", one-line help). Each function takes the remaining argv.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("sampling.cli:generate_main", "sample a completion (every sampler setting is a flag)"),
    "chat": ("sampling.cli:chat_main", "multi-turn chat in the terminal"),
    "train": ("llada.train:main", "pretraining / SFT from a YAML recipe"),
    "vrpo": ("alignment.train:main", "VRPO preference optimisation from a YAML recipe (LLaDA 1.5)"),
    "vrpo-variance": ("alignment.variance:main", "Var(score) / Var(loss) / Var(grad) of the VRPO estimator"),
    "vrpo-collect": ("alignment.collect:main", "preference pairs from verifiable tasks"),
    "eval": ("eval.__main__:main", "run lm-eval with the llada model registered"),
    "demo": ("demo.app:main", "serve the Gradio chat and vision demo"),
    "info": ("llada.cli:info_main", "describe a checkpoint"),
}


def _resolve(target: str) -> Callable[[Sequence[str]], Optional[int]]:
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise SystemExit(
            f"llada: this subcommand needs `{err.name}`, which is not installed "
            f"(install the matching extra, e.g. pip install 'llada-suite[all]')"
        ) from err
    return getattr(module, func_name)


def info_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="llada info", description="Describe a LLaDA checkpoint.")
    parser.add_argument("model", help="Hub id or local folder")
    args = parser.parse_args(argv)
    from transformers import AutoConfig

    import llada  # noqa: F401  (registers the model type)

    config = AutoConfig.from_pretrained(args.model)
    n = config.n_layers * (
        2 * config.d_model * config.d_model
        + 2 * config.d_model * config.num_kv_heads * config.head_dim
        + 3 * config.d_model * config.mlp_hidden_size
        + 2 * config.d_model
    ) + config.d_model + config.padded_vocab_size * config.d_model * (1 if config.weight_tying else 2)
    print(f"model_type      {config.model_type}")
    print(f"layers          {config.n_layers}  d_model {config.d_model}  heads {config.n_heads} (kv {config.num_kv_heads})")
    print(f"mlp_hidden_size {config.mlp_hidden_size}  vocab {config.padded_vocab_size}  max_len {config.max_sequence_length}")
    print(f"parameters      {n:,}")
    print(f"mask id         {config.mask_token_id}  eos {config.eos_token_id}  pad {config.pad_token_id}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        print("\nusage: llada <subcommand> [options]   (llada <subcommand> --help for its options)\n")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<14} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"llada: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    result = _resolve(SUBCOMMANDS[name][0])(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
