"""Efficiency: parameters and MACs, latency, the deploy forms and ONNX."""
