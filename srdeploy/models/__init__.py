"""Package data: the shipped generators (ONNX + manifest + state_dict)."""
