"""The engine: one curriculum stage (building it, the epoch loop, its state and records), the command line,
recipes, optimizers, the step monitor, acceleration, distributed processes, W&B tracking and the history."""
