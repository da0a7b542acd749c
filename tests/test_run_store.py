"""RunStore: durable, resumable JSONL records."""

from __future__ import annotations

import pytest

from collabllm_verl.recipe.core.run_store import RunStore, stable_key


def test_records_survive_a_restart_and_a_partial_last_line_is_dropped(tmp_path):
    path = tmp_path / "out" / "conversations.jsonl"
    store = RunStore(path)
    store.append({"key": "a", "value": 1})
    store.append({"key": "b", "value": 2})
    with open(path, "a", encoding="utf-8") as fh:  # a run killed while writing its third record
        fh.write('{"key": "c", "val')
    again = RunStore(path)
    assert "a" in again and "b" in again and "c" not in again and len(again) == 2
    assert [r["value"] for r in again.records()] == [1, 2]
    again.append({"key": "c", "value": 3})
    assert [r["key"] for r in RunStore(path).records()] == ["a", "b", "c"]


def test_a_corrupt_complete_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"key": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.jsonl: line 2"):
        RunStore(path)
    path.write_text('{"nokey": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        RunStore(path)


def test_stable_key_depends_only_on_the_parts():
    assert stable_key("task", {"b": 1, "a": 2}, 0) == stable_key("task", {"a": 2, "b": 1}, 0)
    assert stable_key("task", 0) != stable_key("task", 1)
    assert len(stable_key("x")) == 16
