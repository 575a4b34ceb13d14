"""Experiment recipes and their one runner: the demo's runs and the paper's ablation tables.

  recipes.py   the runs and table rows, as data (ml_collections): which training runs a table or
               the demo needs (stage, insert variant, where each starts from) and what each row
               or method evaluates (model, keyframes, control points, columns)
  runner.py    trains the runs (reused when finished), exports the models, evaluates the rows and
               writes the tables; `python -m coprop_jax.ablate` and `python -m coprop_jax.demo`
               are configurations of it
  progress.py  progress bars fed by the trainer's log records; other libraries' INFO/WARNING
               chatter kept in the log file
"""
