"""Data: image and label readers, the Cityscapes dataset and loader, the per-profile cache, transforms,
the photometric ops that run on the training device, and the signal-safe helper processes."""
