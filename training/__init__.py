"""Shared code of the Fast-SCNN training scripts: data, losses, metrics, the stage loop, checkpoints."""
