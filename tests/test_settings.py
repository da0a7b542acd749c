"""One home per default: the documented settings tables are the pydantic models' fields, and the models
reject unknown keys with a message that names them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collabllm_verl.recipe.core.settings import JudgeSettings, SimulatorSettings, settings_table

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$")


def documented_table(doc: str | Path, model: type) -> list[tuple[str, str, str]]:
    """The rows of the first table after the line that names ``model`` in ``doc`` (a name in docs/ or a path)."""
    lines = (DOCS / doc).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if f"settings.{model.__name__}" in line)
    rows, seen_table = [], False
    for line in lines[start + 1:]:
        match = ROW.match(line)
        if match:
            rows.append(match.groups())
            seen_table = True
        elif seen_table and not line.startswith("|"):
            break
    return rows


@pytest.mark.parametrize(("doc", "model"), [("user_simulator.md", SimulatorSettings),
                                            ("metrics_and_reward.md", JudgeSettings)])
def test_documented_defaults_are_the_models(doc, model):
    assert documented_table(doc, model) == settings_table(model)


def test_a_changed_default_is_caught(tmp_path):
    """The comparison above can fail: the doc with one default edited no longer matches the model."""
    text = (DOCS / "metrics_and_reward.md").read_text(encoding="utf-8")
    row = "| `temperature` | `0.0` |"
    assert text.count(row) == 1
    edited = tmp_path / "edited.md"
    edited.write_text(text.replace(row, "| `temperature` | `1.0` |"), encoding="utf-8")
    assert documented_table(edited, JudgeSettings) != settings_table(JudgeSettings)


def test_role_defaults_and_aliases():
    simulator = SimulatorSettings.from_mapping({"user_model": "openai/scripted-user", "top_p": 0.9}, where="cfg")
    assert simulator.model == "openai/scripted-user" and simulator.completion_kwargs == {"top_p": 0.9}
    llm = simulator.to_llm(where="cfg")
    assert llm.completion_kwargs == {"temperature": 1.0, "max_tokens": 512, "top_p": 0.9}
    judge = JudgeSettings.from_mapping({"base_url": "http://127.0.0.1:1/v1", "temperature": None}, where="j")
    assert judge.api_base == "http://127.0.0.1:1/v1" and judge.temperature == 0.0  # None: the default


def test_unknown_and_bad_keys_name_the_key():
    with pytest.raises(ValueError, match=r"unknown llm_judge_kwargs key 'temprature'; known keys: .*'temperature'"):
        JudgeSettings.from_mapping({"temprature": 0}, where="llm_judge_kwargs")
    with pytest.raises(ValueError, match=r"user_simulator.max_concurrency"):
        SimulatorSettings.from_mapping({"max_concurrency": 0}, where="user_simulator")
    with pytest.raises(TypeError, match="user_simulator: must be a mapping"):
        SimulatorSettings.from_mapping(["model"], where="user_simulator")
