"""LLaDA: masked diffusion language models, natively on transformers 5.x.

`import llada` registers the model with transformers, so that

    transformers.AutoModel.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")

(or a local folder in the same layout) loads the native `LLaDAModelLM`, without remote code, even though
the checkpoint's `config.json` carries an `auto_map` to remote code.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from .configuration_llada import LLaDAConfig
from .loading import LLAMA_KEY_MAPPING, CheckpointError, convert_llama_state_dict, rename_llama_key
from .modeling_llada import LLaDAModel, LLaDAModelLM, LLaDAOutput

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM):
        auto.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


_register()


def __getattr__(name: str):
    # Lazily exposed so `import llada` stays light (tokenizer helpers, likelihood, losses).
    if name in ("log_likelihood", "log_likelihood_batch"):
        from . import likelihood

        return getattr(likelihood, name)
    raise AttributeError(f"module 'llada' has no attribute {name!r}")


__all__ = [
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAOutput",
    "LLAMA_KEY_MAPPING",
    "CheckpointError",
    "convert_llama_state_dict",
    "rename_llama_key",
]
