"""Test support: an in-process harness that runs the CollabLLM agent loop through verl's real
``AgentLoopWorker`` (used by tests and benchmarks, not by training)."""
