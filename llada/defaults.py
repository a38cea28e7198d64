"""The embedded default models: small LLaDA models trained by this project and shipped in the repo.

Every command (`llada generate`, `llada chat`, the demo, the local lm-eval tasks) uses these when no
model is named, so the suite works offline. They live in `llada/embedded/<name>/` in the Hub layout
(config.json, model.safetensors, tokenizer files with the LLaDA chat template).
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

#: role -> folder name under EMBEDDED_DIR
EMBEDDED_MODELS = {
    "base": "llada-mini-base",
    "instruct": "llada-mini-instruct",
    "vrpo": "llada-mini-vrpo",
    "vision": "llada-mini-vision",
}


def embedded_model_path(role: str = "instruct") -> Path:
    """Folder of the embedded model for `role` ("base", "instruct", "vrpo", "vision")."""
    if role not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model role {role!r}; choose from {', '.join(EMBEDDED_MODELS)}")
    return EMBEDDED_DIR / EMBEDDED_MODELS[role]


def resolve_model(name: str | None, role: str = "instruct") -> str:
    """`name` if given, else the embedded default for `role`; a clear error when neither exists."""
    if name:
        return name
    path = embedded_model_path(role)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no model given and the embedded default {role!r} model is not at {path}; "
            f"pass a Hub id or a checkpoint folder (--model)"
        )
    return str(path)
