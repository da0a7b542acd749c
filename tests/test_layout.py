"""The layering rule of docs/architecture.md: the simulation-and-scoring core never imports verl.

Evaluation and data generation run the core outside any verl process, so a verl import sneaking into it
would make them pay verl's (and torch's) start-up and tie them to verl's version.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE_MODULES = [
    "collabllm_verl.recipe.core.forward_sampling",
    "collabllm_verl.recipe.core.multiturn_reward",
    "collabllm_verl.recipe.core.llm_client",
    "collabllm_verl.recipe.core.validation",
    "collabllm_verl.recipe.verl_adapters.step_summary",
    "collabllm_verl.interactions.collabllm_interaction",
    "collabllm_verl.interactions.loader",
    "collabllm_verl.metrics",
    "collabllm_verl.recipe.dataset.io",
    "collabllm_verl.recipe.dataset.rows",
    "collabllm_verl.recipe.dataset.system_prompt",
    "collabllm_verl.recipe.dataset.dpo",
    "collabllm_verl.recipe.dataset.source",
    "collabllm_verl.recipe.data_engine.task",
    "collabllm_verl.recipe.data_engine.openers",
    "collabllm_verl.recipe.data_engine.config",
    "collabllm_verl.recipe.data_engine.candidates",
    "collabllm_verl.recipe.data_engine.conversation",
    "collabllm_verl.recipe.data_engine.schema",
    "collabllm_verl.recipe.data_engine.runner",
    "collabllm_verl.recipe.data_engine.build",
    "collabllm_verl.recipe.offline.server",
    "collabllm_verl.recipe.offline.scripted_judges",
    "collabllm_verl.recipe.offline.scripted_assistant",
    # evaluation: the pipeline imports tasks, conversations, statistics and report; compare is separate
    "collabllm_verl.recipe.evaluation.pipeline",
    "collabllm_verl.recipe.evaluation.compare",
    "collabllm_verl.recipe.serving.hf_chat",
]

_PROBE = """
import importlib, json, sys
module = sys.argv[1]
importlib.import_module(module)
print(json.dumps(sorted(m for m in sys.modules if m == "verl" or m.startswith("verl."))))
"""


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_not_import_verl(module):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        check=True,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
    )
    verl_modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert verl_modules == [], f"{module} imports verl (directly or through {verl_modules[:3]})"


def test_probe_detects_a_verl_import():
    """The check above can fail: the verl adapter module does import verl."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "collabllm_verl.recipe.verl_adapters.reward_manager"],
        capture_output=True,
        text=True,
        check=True,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
    )
    assert "verl" in json.loads(out.stdout.strip().splitlines()[-1])


def test_no_file_cites_notes_outside_the_repository():
    """The project's docs stand alone: docs/design.md is the reference, nothing points outside the repo."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    skip = {".git", ".venv", ".venv-ci", "outputs", "__pycache__", "node_modules"}
    offenders = []
    for path in root.rglob("*"):
        if not path.is_file() or skip & set(path.relative_to(root).parts) or path.suffix in {".pyc", ".parquet"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "DESIGN" + ".md" in text or "FIDELITY" + ".md" in text or "../" + "shared/" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
