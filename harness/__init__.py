"""Benchmark harness for LLM compression."""
