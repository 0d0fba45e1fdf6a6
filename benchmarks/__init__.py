"""Benchmarks behind `forgetless bench ...`; each writes Markdown (+ JSON, PNG) into benchmarks/results/."""
