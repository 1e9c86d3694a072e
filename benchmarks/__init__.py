"""Benchmarks against the Keras tutorial's pipeline and against this machine: ``python -m benchmarks.run_all``."""
