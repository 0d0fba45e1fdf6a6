"""Serving runtime: base model build, LoRA training, vLLM process control, routes.yaml, and production manifests."""
