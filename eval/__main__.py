"""`python -m eval` / `llada eval`: the lm_eval command line with the `llada` model registered.

Every lm_eval flag is forwarded unchanged. Two defaults are added when absent:
    --model llada                     (the adapter in eval/lm_eval_adapter.py; `llada_v`, its LLaDA-V subclass,
                                       when a local image task such as llada_shapes is asked for)
    --include_path <eval/tasks>       (the local offline tasks: llada_arith_mc, llada_knowledge_mc,
                                       llada_arith, llada_reverse, group llada_local)

    python -m eval --tasks llada_local --apply_chat_template --limit 20 --output_path out/
    python -m eval --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,gen_length=256,steps=256,block_length=32 \\
        --tasks gsm8k --apply_chat_template --batch_size 4
    accelerate launch --num_processes 2 -m eval --tasks llada_arith_mc --output_path out/
    python -m eval --tasks llada_shapes --limit 20         (image questions, the embedded LLaDA-V)
    python -m eval ls tasks               (lm_eval subcommands work too)

The model defaults to the embedded instruct model when `pretrained` is not in --model_args. When every task
asked for is a local one, lm-eval's built-in task folders (about 15,000 tasks) are not indexed, which saves
tens of seconds per run; otherwise lm-eval behaves exactly as usual.
lm-eval 0.4.13 does not load models from the `lm_eval.models` entry-point group; this command (or
`import eval.lm_eval_adapter` before calling lm_eval's API) is how `llada` gets registered.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
_SUBCOMMANDS = ("run", "ls", "validate")


def _has_flag(argv: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in argv for n in names)


def lm_eval_argv(argv: Sequence[str]) -> list[str]:
    """The lm_eval argv for `python -m eval ARGV`: subcommand kept, --model / --include_path defaulted."""
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        return argv
    command = argv[0] if argv and argv[0] in _SUBCOMMANDS else "run"
    rest = argv[1:] if argv and argv[0] in _SUBCOMMANDS else argv
    extra: list[str] = []
    if command == "run" and not _has_flag(rest, "--model", "-M"):
        tasks = requested_tasks(rest)
        extra += ["--model", "llada_v" if set(tasks) & local_image_tasks() else "llada"]
    if command in _SUBCOMMANDS and not _has_flag(rest, "--include_path"):
        extra += ["--include_path", str(TASKS_DIR)]
    elif _has_flag(rest, "--include_path"):
        print(
            f"llada eval: --include_path given, so the local tasks in {TASKS_DIR} are not added "
            f"(lm_eval takes one include path)",
            file=sys.stderr,
        )
    return [command] + extra + rest


def local_image_tasks() -> set[str]:
    """Local tasks that send images (a `doc_to_image` in their YAML): served by the `llada_v` model."""
    import re

    names = set()
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        task = re.search(r"^task:\s*(\S+)", text, flags=re.M)
        if task and re.search(r"^doc_to_image:", text, flags=re.M):
            names.add(task.group(1))
    return names


def local_task_names() -> set[str]:
    """Tasks, groups and tags defined in eval/tasks/."""
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks)


def requested_tasks(argv: Sequence[str]) -> list[str]:
    """The task names of a `--tasks a,b` / `--tasks a b` / `-t a` / `--tasks=a,b` argument list."""
    names: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--tasks="):
            names += arg.split("=", 1)[1].split(",")
        elif arg in ("--tasks", "-t"):
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                names += argv[i].split(",")
                i += 1
            continue
        i += 1
    return [n for n in names if n]


def _index_local_tasks_only() -> None:
    """Make lm_eval's CLI build its TaskManager without the built-in task folders (local tasks only)."""
    import lm_eval.tasks

    base = lm_eval.tasks.TaskManager

    class LocalTaskManager(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["include_defaults"] = False
            super().__init__(*args, **kwargs)

    lm_eval.tasks.TaskManager = LocalTaskManager


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import lm_eval  # noqa: F401
    except ModuleNotFoundError as err:
        raise SystemExit("llada eval needs lm-eval: pip install 'llada-suite[eval]'") from err
    import eval.lm_eval_adapter  # noqa: F401  (registers the `llada` model)
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    full = lm_eval_argv(argv)
    tasks = requested_tasks(full)
    if full[0] == "run" and not _has_flag(argv, "--include_path") and tasks and set(tasks) <= local_task_names():
        _index_local_tasks_only()
    saved = sys.argv
    sys.argv = ["lm-eval"] + full
    try:
        parser = HarnessCLI()
        args = parser.parse_args()
        parser.execute(args)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
