"""Model flavors (River, ONNX), registry access and champion/canary/shadow routing."""
