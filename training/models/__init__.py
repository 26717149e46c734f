"""Models: building an architecture by name, loading weights, the frozen teacher, Fast-SCNN's auxiliary heads."""
