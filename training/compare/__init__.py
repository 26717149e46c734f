"""Equal-budget comparisons of training methods (issue 23): `python -m training.compare CONFIG.toml` or `--demo OUT`.

config.py reads a comparison file (comparisons/*.toml), budget.py counts what a stage costs and sets the epochs,
plan.py plans each arm's stages as the chain would run them, run.py runs them, results.py reads their history.csv
files, report.py writes summary.csv and the figure; docs/comparisons.md.
"""
