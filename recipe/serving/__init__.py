"""Serving a Hugging Face checkpoint with ``transformers`` (no verl import).

* :mod:`.hf_generation` - batched sampling with a ``transformers`` causal LM;
* :mod:`.batching` - the batching loop of both servers below (queue, batch wait, groups of equal settings,
  sampling in a worker thread, aborts);
* :mod:`.http_thread` - uvicorn in a background thread (also used by the offline stand-in server);
* :mod:`.chat_server` - an OpenAI-compatible chat server over the responders it is given;
* :mod:`.hf_chat` - a checkpoint as a chat responder, and :func:`~.hf_chat.serve_checkpoint`, used by
  ``evaluate.py --policy_checkpoint``.

The CPU backend's ``hf`` rollout server (:mod:`collabllm_verl.recipe.cpu.hf_server`) uses
:mod:`.hf_generation` and :mod:`.batching` too.
"""
