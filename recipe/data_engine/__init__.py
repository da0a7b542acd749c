"""The data engine: multi-turn CollabLLM datasets from single-turn tasks (``build_dataset.py``).

Given a single-turn task (a request with its reference answer), the user simulator writes a short, vague
**opener**; then, turn by turn, the assistant proposes K candidate replies, each candidate's
multiturn-aware reward (MR) is estimated by forward sampling and the metric registry, exactly as in
training (:mod:`collabllm_verl.recipe.core.forward_sampling`, :mod:`collabllm_verl.recipe.core.multiturn_reward`),
the best candidate continues the conversation and the next user turn is taken from its longest future.
Every candidate is kept with its score, so the output serves RL (prompts), SFT (best replies) and DPO
(best against worst) alike.

Modules, one responsibility each (no verl import anywhere):

* :mod:`.task`: a source row as a task (hidden goal, reference, metadata, resume key);
* :mod:`.openers`: the simulated first user message;
* :mod:`.candidates`: candidate replies and their MR (forward sampling + scoring);
* :mod:`.conversation`: the turn-by-turn search and its stopping rules;
* :mod:`.schema`: rows in the published ``collabllm-multiturn-*`` schema and the output files;
* :mod:`.runner`: many tasks at once through the core task runner
  (:mod:`collabllm_verl.recipe.core.task_runner`: resumable, retries, failure budget, progress), with a cost
  summary.
"""
