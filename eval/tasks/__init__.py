"""Local lm-eval tasks that run offline (YAML + data files shipped here; `python -m eval` adds this folder
to lm_eval's --include_path). Data files are written by `python -m eval.tasks.make_data`."""
