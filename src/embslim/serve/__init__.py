"""Serving: export a trained run as a TorchScript program plus its embedding tensors (`embslim export`)."""
