"""Evaluation as in the CollabLLM paper's experiments (docs/evaluation.md): full simulated conversations with
the model under test, the task's metrics on each finished conversation, means with bootstrap confidence
intervals, and paired comparisons of two runs.

Modules, one responsibility each (no verl import anywhere; ``evaluate.py`` is the CLI):

* :mod:`.settings` - :class:`~.settings.EvaluationSettings`, the typed settings of a run (``evaluate.py``'s
  flags are generated from its fields);
* :mod:`.pipeline` - a run in steps: plan (tasks, metrics, models), run, summarise, write;
* :mod:`.tasks` - the evaluation tasks (hidden goal, ground truth) from a source dataset or a processed
  validation parquet;
* :mod:`.conversations` - one conversation per (task, sample) through the project's conversation loop,
  scored once with the reward core (``score_conversation``); run by the core task runner (concurrent,
  resumable, failure budget, progress bar);
* :mod:`.statistics` - per-task means, bootstrap intervals over tasks, pass^k, paired differences;
* :mod:`.report` - ``summary.json``, ``summary.md`` and the figure of one run;
* :mod:`.compare` - the paired comparison of two runs (``compare.json``, ``compare.md``, the figure).
"""
