"""Evaluation: scoring at the labels' full resolution, test-time augmentation, prediction export, previews."""
