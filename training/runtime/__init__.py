"""Where a stage runs: the device and its acceleration (AMP, compile), distributed process groups, stop signals.
A lower layer than engine/: nothing here imports training logic."""
