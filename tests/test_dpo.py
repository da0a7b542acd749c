"""process_dataset.py --dataset_type dpo: one chosen/rejected pair per (conversation, turn), on rows in the
published multi-turn schemas (the small one with per-metric reward lists, and the real ``-large`` row)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_process_dataset import A1, U1, U2, multiturn_row

import process_dataset
from collabllm_verl.recipe.dataset.system_prompt import COLLABORATOR_SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]
LARGE_ROW = REPO / "data" / "collabllm" / "collabllm_multiturn_medium_large_rows.jsonl"
_row = multiturn_row


ROWS = [
    _row(7, 1, [U1], "Which series do you mean?", 0.40),
    _row(7, 1, [U1], "It is 2.", -0.30),
    _row(7, 1, [U1], "Do you mean 1/k^2?", 0.40),  # ties the best: the first one stays chosen
    _row(7, 3, [U1, A1, U2], "It is pi^2/6.", 0.90),
    _row(7, 3, [U1, A1, U2], "About 1.64.", 0.89),  # gap 0.01 < 0.02: no pair
    _row(9, 1, [{"role": "user", "content": "Help me with a limit."}], "Which limit?", 0.2),  # one candidate
]


def _run(tmp_path: Path, rows: list[dict], *extra) -> tuple[int, Path]:
    source = tmp_path / "mt.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code = process_dataset.main(
        ["--dataset", str(source), "--local_dir", str(out), "--dataset_type", "dpo", "--validation_size", "0",
         *map(str, extra)]
    )
    return code, out


def test_best_against_worst_per_turn_with_a_minimum_gap(tmp_path):
    code, out = _run(tmp_path, ROWS)
    assert code == 0
    pairs = pd.read_parquet(out / "dpo_train.parquet")
    assert len(pairs) == 1
    pair = pairs.iloc[0]
    assert list(pair["prompt"]) == [{"role": "system", "content": COLLABORATOR_SYSTEM_PROMPT}, U1]
    assert list(pair["chosen"]) == [{"role": "assistant", "content": "Which series do you mean?"}]
    assert list(pair["rejected"]) == [{"role": "assistant", "content": "It is 2."}]
    assert (pair["score_chosen"], pair["score_rejected"]) == (0.40, -0.30)
    info = pair["extra_info"]
    assert (info["conv_id"], info["turn_id"], info["num_candidates"]) == ("7", 1, 3)
    assert (info["index_chosen"], info["index_rejected"]) == (0, 1)
    preview = json.loads((out / "dpo_preview.json").read_text())
    assert preview["num_train"] == 1

    # a smaller minimum gap keeps the second turn of conversation 7 as well
    code, out = _run(tmp_path, ROWS, "--dpo_min_gap", "0.005", "--system_prompt", "none")
    assert code == 0
    pairs = pd.read_parquet(out / "dpo_train.parquet")
    assert sorted(p["turn_id"] for p in pairs["extra_info"]) == [1, 3]
    late = pairs[pairs["extra_info"].map(lambda e: e["turn_id"]) == 3].iloc[0]
    assert list(late["prompt"]) == [U1, A1, U2]  # no system prompt: the history only
    assert late["chosen"][0]["content"] == "It is pi^2/6."


def test_validation_split_keeps_a_conversation_whole(tmp_path):
    rows = [*ROWS, _row(11, 1, [U1], "Which one?", 0.5), _row(11, 1, [U1], "2.", 0.0)]
    source = tmp_path / "mt.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert process_dataset.main(["--dataset", str(source), "--local_dir", str(tmp_path / "o"), "--dataset_type",
                                 "dpo", "--validation_size", "1", "--dpo_min_gap", "0"]) == 0
    train = pd.read_parquet(tmp_path / "o" / "dpo_train.parquet")
    val = pd.read_parquet(tmp_path / "o" / "dpo_validation.parquet")
    convs = lambda frame: {e["conv_id"] for e in frame["extra_info"]}  # noqa: E731
    assert len(convs(val)) == 1 and not convs(train) & convs(val) and convs(train) | convs(val) == {"7", "11"}


def test_the_published_large_schema(tmp_path):
    """The real -large row (sessions as a dict, rewards as summary statistics): its one candidate gives no
    pair; with a second, lower-scored candidate of the same turn it gives one."""
    row = json.loads(LARGE_ROW.read_text())
    code, _ = _run(tmp_path, [row])
    assert code == 2  # no pair left
    worse = {**row, "completion": "Here is a generic brochure.", "score": row["score"] - 0.1}
    code, out = _run(tmp_path, [row, worse])
    assert code == 0
    pair = pd.read_parquet(out / "dpo_train.parquet").iloc[0]
    assert pair["chosen"][0]["content"] == row["completion"]
    assert pair["score_chosen"] == pytest.approx(row["score"])
    assert list(pair["prompt"])[1:] == row["prompt"]


def test_bad_input_names_the_row(tmp_path, caplog):
    rows = [dict(r) for r in ROWS]
    rows[1]["prompt"] = [{"role": "user", "content": "something else"}]
    assert _run(tmp_path, rows)[0] == 2
    assert "row 1: field 'prompt': differs from row 0" in caplog.text
    assert process_dataset.main(["--dataset", str(REPO / "data" / "math" / "math500_level5.jsonl"),
                                 "--local_dir", str(tmp_path / "st"), "--dataset_type", "dpo",
                                 "--max_rows", "2"]) == 2
    assert "needs scored multi-turn rows" in caplog.text


def test_rows_are_in_trl_conversational_preference_format(tmp_path):
    """TRL's own format check, when TRL is installed (it is not a dependency of this project)."""
    data_utils = pytest.importorskip("trl.data_utils")
    import datasets

    _, out = _run(tmp_path, ROWS)
    dataset = datasets.load_dataset("parquet", data_files=str(out / "dpo_train.parquet"), split="train")
    assert data_utils.is_conversational(dataset[0])
    assert {"prompt", "chosen", "rejected"} <= set(dataset.column_names)


def test_ties_as_the_original_first_best_is_chosen_last_worst_is_rejected(tmp_path):
    """fidelity.md 7.1: of equally high candidates the first is chosen, of equally low ones the last is rejected."""
    rows = [
        _row(4, 1, [U1], "Low one.", 0.10),
        _row(4, 1, [U1], "High one.", 0.70),
        _row(4, 1, [U1], "Low two.", 0.10),
        _row(4, 1, [U1], "High two.", 0.70),
        _row(4, 1, [U1], "Low three.", 0.10),
    ]
    code, out = _run(tmp_path, rows)
    assert code == 0
    pair = pd.read_parquet(out / "dpo_train.parquet").iloc[0]
    assert pair["chosen"][0]["content"] == "High one." and pair["rejected"][0]["content"] == "Low three."
    assert (pair["extra_info"]["index_chosen"], pair["extra_info"]["index_rejected"]) == (1, 4)
