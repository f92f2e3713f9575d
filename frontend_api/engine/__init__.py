"""Inference engines behind the front-end: the protocol, and the Triton implementation."""
