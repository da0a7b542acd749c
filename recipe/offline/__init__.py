"""Offline stand-ins for tests, benchmarks and the CPU quick start: a local OpenAI-compatible server,
a scripted user simulator and scripted judges. None of them is an LLM; they only make the pipeline
runnable without API keys or network access. Checkpoints are served by :mod:`collabllm_verl.recipe.serving`.
"""
