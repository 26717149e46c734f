"""`python -m training.report`: graphs and a Markdown report of the runs (matplotlib)."""
