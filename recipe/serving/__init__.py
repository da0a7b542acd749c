"""Serving a Hugging Face checkpoint with ``transformers`` (no verl import).

* :mod:`.hf_generation` - batched sampling with a ``transformers`` causal LM (shared with the CPU backend's
  ``hf`` rollout server);
* :mod:`.hf_chat` - an OpenAI-compatible chat endpoint over a checkpoint on 127.0.0.1, used by
  ``evaluate.py --policy_checkpoint``.
"""
