"""The raw-source adaptors (``--adaptor``): MATH-Hard, Medium, BigCodeBench v0.1.2 and Abg-CoQA, read from
local files in each published schema (the hub is unreachable here), through the real CLI entry point and
real ``datasets`` loading; splits, goals, references, metadata and bad rows."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

import process_dataset
from collabllm_verl.recipe.dataset import adaptors
from collabllm_verl.recipe.dataset.adaptors import cl100k_tokens, load_adapted_rows
from collabllm_verl.recipe.dataset.source import adaptor_task

REPO = Path(__file__).resolve().parents[1]
MATH_HARD = REPO / "tests" / "fixtures" / "math_hard"
BIGCODEBENCH = REPO / "data" / "bigcodebench" / "bigcodebench_tasks.jsonl"  # 36 real BigCodeBench rows


def run(*args) -> int:
    return process_dataset.main([str(a) for a in args])


def rl_rows(out: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(out / "rl_train.parquet"), pd.read_parquet(out / "rl_validation.parquet")]
    )


def metadata(row) -> dict:
    return json.loads(row["extra_info"]["metadata"])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- MATH-Hard


def test_math_hard_reads_lightevals_format_and_the_hubs_splits(tmp_path):
    """A folder in the hub layout (train.jsonl, test.jsonl): --split picks the file, problem is the goal,
    solution the ground truth, the last \\boxed{} the answer, level and type stay in the metadata."""
    out = tmp_path / "test"
    assert (
        run(
            "--dataset",
            MATH_HARD,
            "--adaptor",
            "math_hard",
            "--split",
            "test",
            "--local_dir",
            out,
            "--dataset_type",
            "rl",
            "--validation_size",
            "0",
        )
        == 0
    )
    rows = rl_rows(out)
    source = [json.loads(line) for line in (MATH_HARD / "test.jsonl").read_text().splitlines()]
    assert len(rows) == len(source) == 3
    for row, raw in zip(rows.to_dict("records"), source, strict=True):
        assert row["extra_info"]["single_turn_prompt"] == raw["problem"]
        assert row["reward_model"]["ground_truth"] == raw["solution"]
        assert f"\\boxed{{{row['extra_info']['answer']}}}" in raw["solution"]
        assert (metadata(row)["level"], metadata(row)["type"]) == ("Level 5", raw["type"])
        assert row["ability"] == "math" and row["data_source"] == "math_hard"
        assert row["extra_info"]["interaction_kwargs"]["task_desc"] == adaptor_task("math_hard")[1]
    assert (
        run(
            "--dataset",
            MATH_HARD,
            "--adaptor",
            "math_hard",
            "--local_dir",
            tmp_path / "train",
            "--dataset_type",
            "rl",
            "--validation_size",
            "0",
        )
        == 0
    )
    assert len(rl_rows(tmp_path / "train")) == 6


def test_math_hard_bad_row_names_file_row_and_field(tmp_path, caplog):
    rows = [json.loads(line) for line in (MATH_HARD / "train.jsonl").read_text().splitlines()]
    del rows[2]["type"]
    bad = write_jsonl(tmp_path / "math_hard.jsonl", rows)
    assert (
        run("--dataset", bad, "--adaptor", "math_hard", "--local_dir", tmp_path / "o", "--dataset_type", "rl")
        == 2
    )
    assert f"{bad}: row 2: field 'type': missing" in caplog.text
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.parquet"))


# ---------------------------------------------------------------------------------------------- Medium


def medium_articles(n: int, long_index: int) -> list[dict]:
    """``n`` dated articles in Kamaljp/medium_articles' schema (one a day, in shuffled file order), one of them
    longer than 512 tokens, plus one undated article."""
    start = datetime(2021, 1, 1, 9, 30, tzinfo=timezone.utc)
    rows = []
    for i in range(n):
        body = f"Article {i} explains one idea about gardening in a few plain sentences. " * (
            80 if i == long_index else 3
        )
        rows.append(
            {
                "title": f"Gardening note {i}",
                "text": body.strip(),
                "url": f"https://medium.com/@a/{i}",
                "authors": "['A. Writer']",
                "timestamp": str(start + timedelta(days=i)),
                "tags": "['Gardening']",
            }
        )
    random.Random(7).shuffle(rows)
    rows.append(
        {
            "title": "Undated",
            "text": "No date here.",
            "url": "",
            "authors": "[]",
            "timestamp": None,
            "tags": "[]",
        }
    )
    return rows


def test_medium_splits_by_date_and_drops_long_articles(tmp_path):
    """40 dated articles, shares 0.5 (train) and 0.25 (test): the 30 most recent are split 10 test / 20 train
    (seeded), the 10 oldest and the undated one are never used, and the article over 512 tokens is dropped."""
    rows = medium_articles(40, long_index=35)
    assert cl100k_tokens(next(r["text"] for r in rows if r["title"] == "Gardening note 35")) > 512
    source = write_jsonl(tmp_path / "medium.jsonl", rows)
    options = ["--adaptor_option", "train_share=0.5", "--adaptor_option", "test_share=0.25"]
    picked = {}
    for split in ("train", "test"):
        _, adapted, _ = load_adapted_rows("medium", str(source), split, options[1::2])
        picked[split] = {int(r["title"].split()[-1]) for r in adapted}
        for r in adapted:
            assert r["solution"] in r["problem"] and r["title"] in r["problem"] and r["num_tokens"] <= 512
    assert not picked["train"] & picked["test"]
    assert picked["train"] | picked["test"] == set(range(10, 40)) - {35}
    assert len(picked["test"]) in (9, 10) and len(picked["train"]) + len(picked["test"]) == 29  # 10 + 20 - 1
    # the same seed gives the same split; another seed another one
    again = {
        int(r["title"].split()[-1])
        for r in load_adapted_rows("medium", str(source), "test", options[1::2])[1]
    }
    other = load_adapted_rows("medium", str(source), "test", [*options[1::2], "seed=3"])[1]
    assert again == picked["test"] and {int(r["title"].split()[-1]) for r in other} != picked["test"]
    # through the CLI: the article text is the ground truth and the date is kept
    out = tmp_path / "out"
    assert (
        run(
            "--dataset",
            source,
            "--adaptor",
            "medium",
            "--split",
            "test",
            *options,
            "--local_dir",
            out,
            "--dataset_type",
            "rl",
            "--validation_size",
            "0",
        )
        == 0
    )
    cli_rows = rl_rows(out).to_dict("records")
    assert {int(metadata(r)["title"].split()[-1]) for r in cli_rows} == picked["test"]
    assert all(r["ability"] == "writing" and metadata(r)["timestamp"].startswith("2021-") for r in cli_rows)


def test_medium_test_split_has_the_share_of_dated_articles(tmp_path):
    """Without long articles the test split has exactly int(n * test_share) articles, all newer than every
    article left out."""
    rows = medium_articles(40, long_index=-1)
    source = write_jsonl(tmp_path / "medium.jsonl", rows)
    test = load_adapted_rows("medium", str(source), "test", ["train_share=0.5", "test_share=0.25"])[1]
    train = load_adapted_rows("medium", str(source), "train", ["train_share=0.5", "test_share=0.25"])[1]
    assert (len(test), len(train)) == (10, 20)
    oldest_used = min(r["timestamp"] for r in [*test, *train])
    assert oldest_used == str(datetime(2021, 1, 11, 9, 30, tzinfo=timezone.utc).isoformat())


def test_medium_bad_timestamp_names_the_row(tmp_path):
    rows = medium_articles(5, long_index=-1)
    rows[1]["timestamp"] = "last tuesday"
    source = write_jsonl(tmp_path / "medium.jsonl", rows)
    with pytest.raises(ValueError, match=r"medium.jsonl: row 1: field 'timestamp': expected an ISO date"):
        load_adapted_rows("medium", str(source), "train", [])


# ---------------------------------------------------------------------------------------- BigCodeBench


def test_bigcodebench_80_20_split_and_code_prompt_in_the_metadata(tmp_path):
    source = [json.loads(line) for line in BIGCODEBENCH.read_text().splitlines()]
    splits = {
        split: load_adapted_rows("bigcodebench", str(BIGCODEBENCH), split, [])[1]
        for split in ("train", "test")
    }
    ids = {split: [r["task_id"] for r in rows] for split, rows in splits.items()}
    assert (len(ids["train"]), len(ids["test"])) == (int(36 * 0.8), 36 - int(36 * 0.8)) == (28, 8)
    assert sorted(ids["train"] + ids["test"]) == sorted(r["task_id"] for r in source)
    by_id = {r["task_id"]: r for r in source}
    for row in splits["test"]:
        raw = by_id[row["task_id"]]
        assert row["problem"] == raw["instruct_prompt"]
        assert row["solution"] == raw["code_prompt"] + raw["canonical_solution"]
        assert (row["code_prompt"], row["test"], row["entry_point"]) == (
            raw["code_prompt"],
            raw["test"],
            "task_func",
        )
    # the RL rows carry what pass_rate needs, code_prompt included
    from collabllm_verl.metrics.pass_rate import find_task

    out = tmp_path / "out"
    assert (
        run(
            "--dataset",
            BIGCODEBENCH,
            "--adaptor",
            "bigcodebench",
            "--split",
            "test",
            "--local_dir",
            out,
            "--dataset_type",
            "rl",
            "--validation_size",
            "0",
        )
        == 0
    )
    row = rl_rows(out).iloc[0]
    task = find_task(row["reward_model"]["ground_truth"], row["extra_info"])
    assert task["code_prompt"] == by_id[task["task_id"]]["code_prompt"] and task["entry_point"] == "task_func"
    assert row["ability"] == "coding"


def test_bigcodebench_hub_name_loads_version_v0_1_2(monkeypatch):
    seen = {}

    def fake_load(spec, split="train", num_proc=None):
        seen.update(spec=spec, split=split)
        return [json.loads(line) for line in BIGCODEBENCH.read_text().splitlines()]

    monkeypatch.setattr("collabllm_verl.recipe.dataset.io.load_source_dataset", fake_load)
    _, rows, _ = load_adapted_rows("bigcodebench", "bigcode/bigcodebench", "train", [])
    assert seen == {"spec": "bigcode/bigcodebench", "split": "v0.1.2"} and len(rows) == 28


def test_bigcodebench_missing_code_prompt_names_row_and_field(tmp_path):
    rows = [json.loads(line) for line in BIGCODEBENCH.read_text().splitlines()][:5]
    rows[4]["code_prompt"] = None
    source = write_jsonl(tmp_path / "bcb.jsonl", rows)
    with pytest.raises(ValueError, match=r"bcb.jsonl: row 4: field 'code_prompt': missing"):
        load_adapted_rows("bigcodebench", str(source), "test", [])


async def _extraction_request(monkeypatch, task_row: dict) -> dict:
    from collabllm_verl.metrics import pass_rate as pass_rate_module
    from collabllm_verl.metrics.judge import build_judge_messages
    from collabllm_verl.metrics.registry import MetricContext

    captured = {}

    async def fake_judge(task, metric, ctx, *, sections=None):
        captured["messages"] = build_judge_messages(task, ctx, sections)
        return {"thought": "", "final_code": ""}

    monkeypatch.setattr(pass_rate_module, "ask_judge", fake_judge)
    ctx = MetricContext(
        messages=[{"role": "user", "content": "write it"}, {"role": "assistant", "content": "def f(): pass"}],
        num_history_messages=0,
        ground_truth="",
        extra_info={
            "metadata": json.dumps(task_row),
            "interaction_kwargs": {"single_turn_prompt": task_row["instruct_prompt"]},
        },
    )
    assert await pass_rate_module.pass_rate(ctx) == 0.0  # no code extracted: the sandbox is not reached
    return captured


def test_code_prompt_reaches_the_extraction_judge(monkeypatch):
    import asyncio

    raw = json.loads(BIGCODEBENCH.read_text().splitlines()[0])
    messages = asyncio.run(_extraction_request(monkeypatch, raw))["messages"]
    assert f"<code_prompt>\n{raw['code_prompt']}\n</code_prompt>" in messages[1]["content"]
    without = {k: v for k, v in raw.items() if k != "code_prompt"}
    messages = asyncio.run(_extraction_request(monkeypatch, without))["messages"]
    assert "<code_prompt>" not in messages[1]["content"]


# -------------------------------------------------------------------------------------------- Abg-CoQA


def abg_story(i: int, label: str) -> dict:
    return {
        "id": f"story{i}",
        "source": "mctest",
        "ambiguity": label,
        "story": f"Tom had {i} red apples and a green one. He gave one to his sister.",
        "history_turns": [
            {"turn_id": 2, "question": "Who got one?", "answer": "his sister"},
            {"turn_id": 1, "question": "What did Tom have?", "answer": "apples"},
        ],
        "target_turn": {"turn_id": 3, "question": "Which apple did he give?", "answer": "unknown"},
    }


def write_abg(root: Path, splits: dict[str, list[dict]]) -> Path:
    folder = root / "abg-coqa"
    folder.mkdir(parents=True)
    for name, stories in splits.items():
        (folder / f"coqa_abg_{name}.json").write_text(json.dumps({"version": "1", "data": stories}))
    return root


def test_abg_coqa_labels_splits_and_history(tmp_path):
    root = write_abg(
        tmp_path / "abg",
        {
            "train": [abg_story(1, "ambiguous"), abg_story(2, "non_ambiguous")],
            "val": [abg_story(3, "non_ambiguous")],
            "test": [abg_story(4, "ambiguous")],
        },
    )
    _, train, _ = load_adapted_rows("abg_coqa", str(root), "train", [])
    assert [(r["solution"], r["ambiguous"], r["id"]) for r in train] == [
        ("ambiguous", True, "story1"),
        ("non_ambiguous", False, "story2"),
    ]
    assert "Which apple did he give?" in train[0]["problem"] and "Who got one?" not in train[0]["problem"]
    _, with_history, _ = load_adapted_rows("abg_coqa", str(root), "val", ["history=true"])
    goal = with_history[0]["problem"]
    assert goal.index("Q: What did Tom have?") < goal.index("Q: Who got one?") < goal.index("Which apple")
    out = tmp_path / "out"
    assert (
        run(
            "--dataset",
            root / "abg-coqa" / "coqa_abg_test.json",
            "--adaptor",
            "abg_coqa",
            "--split",
            "test",
            "--local_dir",
            out,
            "--dataset_type",
            "rl",
            "--validation_size",
            "0",
        )
        == 0
    )
    (row,) = rl_rows(out).to_dict("records")
    assert row["reward_model"]["ground_truth"] == "ambiguous" and metadata(row)["ambiguous"] is True


def test_abg_coqa_bad_label_and_missing_file(tmp_path):
    bad = abg_story(5, "maybe")
    root = write_abg(tmp_path / "abg", {"train": [abg_story(1, "ambiguous"), bad]})
    with pytest.raises(ValueError, match=r"coqa_abg_train.json: row 1: field 'ambiguity': expected one of"):
        load_adapted_rows("abg_coqa", str(root), "train", [])
    with pytest.raises(FileNotFoundError, match=r"coqa_abg_test\.json"):
        load_adapted_rows("abg_coqa", str(root), "test", [])
    del bad["target_turn"]["question"]
    bad["ambiguity"] = "ambiguous"
    (root / "abg-coqa" / "coqa_abg_train.json").write_text(json.dumps({"data": [bad]}))
    with pytest.raises(ValueError, match=r"row 0: field 'target_turn.question': missing"):
        load_adapted_rows("abg_coqa", str(root), "train", [])


def test_unknown_option_split_and_adaptor_are_refused(tmp_path, caplog):
    with pytest.raises(ValueError, match=r"--adaptor_option for medium: max_tokenz.*known options: seed"):
        load_adapted_rows("medium", "x.jsonl", "train", ["max_tokenz=3"])
    with pytest.raises(ValueError, match=r"--split must be one of \['train', 'test'\]"):
        load_adapted_rows("bigcodebench", str(BIGCODEBENCH), "validation", [])
    with pytest.raises(ValueError, match="unknown --adaptor"):
        load_adapted_rows("gsm8k", "x", "train", [])
    assert set(adaptors.ADAPTORS) == {"math_hard", "medium", "bigcodebench", "abg_coqa"}
