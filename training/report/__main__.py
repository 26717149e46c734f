from training.errors import run_cli
from training.report.figures import main

run_cli(main)
