"""Data files of the local lm-eval tasks (a package only so that wheels ship the jsonl files)."""
