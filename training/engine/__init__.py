"""The engine: one curriculum stage (building it, the epoch loop, its state and records), the command line,
recipes, optimizers and the lr schedule, the step monitor, W&B tracking and the history (devices, processes and
signals: training/runtime/)."""
