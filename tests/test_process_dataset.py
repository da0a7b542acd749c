"""process_dataset.py on the bundled MATH data, on multi-turn files in the published CollabLLM schemas, and
on bad input. Everything runs through the real CLI entry point and real ``datasets`` loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import process_dataset
from collabllm_verl.recipe.dataset.system_prompt import COLLABORATOR_SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]
MATH_L5 = REPO / "data" / "math" / "math500_level5.jsonl"
MATH_ALL = REPO / "data" / "math" / "math500.jsonl"
LARGE_ROW = REPO / "data" / "collabllm" / "collabllm_multiturn_medium_large_rows.jsonl"


def run_cli(*args: str) -> int:
    return process_dataset.main([str(a) for a in args])


def read(out: Path, kind: str):
    return (
        pd.read_parquet(out / f"{kind}_train.parquet"),
        pd.read_parquet(out / f"{kind}_validation.parquet"),
        json.loads((out / f"{kind}_preview.json").read_text()),
    )


U1 = {"role": "user", "content": "I need the sum of a series."}
A1 = {"role": "assistant", "content": "Which series do you mean?"}
U2 = {"role": "user", "content": "1/k^2 for k from 1 to infinity."}


def multiturn_row(conv: int, turn: int, prompt: list[dict], completion: str, score: float) -> dict:
    """One row in the schema of collabllm-multiturn-math-hard / -medium / -bigcodebench (the small one:
    per-metric reward lists with an ``MR`` list), about the sum of 1/k^2."""
    return {
        "prompt": prompt,
        "completion": completion,
        "conv_id": conv,
        "score": score,
        "single_turn_prompt": "Compute the sum of 1/k^2 for k >= 1.",
        "single_turn_completion": "The sum is \\boxed{\\pi^2/6}.",
        "single_turn_metadata": {"level": 5, "type": "Algebra"},
        "turn_id": turn,
        "sessions": [[{"role": "user", "content": "..."}]],
        "rewards": {"accuracy": [1.0], "MR": [score]},
    }


def multiturn_rows() -> list[dict]:
    """Rows in the published multi-turn schema (built here: no public export of their rows exists, see
    data/README.md). Two conversations; conversation 7 has two turns with two scored candidate completions
    each, conversation 9 one turn with one candidate."""
    u1, a1, u2, row = U1, A1, U2, multiturn_row
    other = {"role": "user", "content": "Help me with a limit."}
    return [
        row(7, 1, [u1], "Which series do you mean?", 0.4),
        row(7, 1, [u1], "It is 2.", -0.3),
        row(7, 3, [u1, a1, u2], "It is pi^2/6.", 0.9),
        row(7, 3, [u1, a1, u2], "About 1.64.", 0.5),
        row(9, 1, [other], "Which limit?", 0.2),
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_math_level5_rl(tmp_path):
    assert run_cli("--dataset", MATH_L5, "--local_dir", tmp_path, "--dataset_type", "rl") == 0
    train, val, preview = read(tmp_path, "rl")
    assert len(train) + len(val) == 134 and len(val) == 13
    assert preview["num_train"] == len(train) and len(preview["rows"]) == 3
    source = [json.loads(line) for line in MATH_L5.read_text().splitlines()]
    by_problem = {r["problem"]: r for r in source}
    for _, row in pd.concat([train, val]).iterrows():
        prompt = list(row["prompt"])
        assert prompt[0] == {"role": "system", "content": COLLABORATOR_SYSTEM_PROMPT}
        assert prompt[-1]["role"] == "user"
        src = by_problem[prompt[-1]["content"]]
        assert row["agent_name"] == "collabllm_agent"
        assert row["data_source"] == "math500_level5"
        assert row["ability"] == "math"
        assert row["reward_model"] == {"style": "rule", "ground_truth": src["solution"]}
        info = row["extra_info"]
        assert info["answer"] == src["answer"]
        assert json.loads(info["metadata"])["unique_id"] == src["unique_id"]
        kwargs = info["interaction_kwargs"]
        assert kwargs["name"] == "collabllm"
        assert kwargs["single_turn_prompt"] == src["problem"]
        assert "math" in kwargs["task_desc"]


def test_filter_on_full_math_file_and_sft(tmp_path):
    args = ["--dataset", MATH_ALL, "--filter", "level=5", "--local_dir", tmp_path, "--dataset_type", "sft"]
    assert run_cli(*args, "--validation_size", "20") == 0
    train, val, _ = read(tmp_path, "sft")
    assert (len(train), len(val)) == (114, 20)
    for messages in train["messages"]:
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert "\\boxed" in messages[-1]["content"]


def test_split_is_seeded_and_deterministic(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        args = ("--dataset", MATH_L5, "--local_dir", tmp_path / name, "--dataset_type", "rl", "--seed", seed)
        assert run_cli(*args) == 0
    val = {n: set(pd.read_parquet(tmp_path / n / "rl_validation.parquet")["extra_info"].map(lambda e: e["index"]))
           for n in "abc"}
    assert val["a"] == val["b"] != val["c"]


def test_multiturn_rl_dedup_and_sft_best_latest_turn(tmp_path):
    src = write_jsonl(tmp_path / "mt.jsonl", multiturn_rows())
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "rl", "--dataset_type", "rl",
                   "--validation_size", "0", "--task_desc", "Solve it.") == 0
    train, val, preview = read(tmp_path / "rl", "rl")
    assert len(val) == 0 and preview["schema"] == "multiturn"
    assert preview["ground_truth_from_completion"] == 0
    # 5 rows, 3 distinct conversation prefixes.
    assert len(train) == 3
    lengths = sorted(len(p) for p in train["prompt"])
    assert lengths == [2, 2, 4]  # system + history
    for _, row in train.iterrows():
        assert row["reward_model"]["ground_truth"] == "The sum is \\boxed{\\pi^2/6}."
        assert row["extra_info"]["interaction_kwargs"]["task_desc"] == "Solve it."
        assert row["extra_info"]["conv_id"] in {"7", "9"}

    assert run_cli("--dataset", src, "--local_dir", tmp_path / "sft", "--dataset_type", "sft",
                   "--validation_size", "0") == 0
    sft, _, _ = read(tmp_path / "sft", "sft")
    finals = {row["extra_info"]["conv_id"]: list(row["messages"]) for _, row in sft.iterrows()}
    assert set(finals) == {"7", "9"}
    # conversation 7: latest turn (3), best candidate (0.9) appended as the final assistant message
    assert [m["role"] for m in finals["7"]] == ["system", "user", "assistant", "user", "assistant"]
    assert finals["7"][-1]["content"] == "It is pi^2/6."
    assert finals["9"][-1]["content"] == "Which limit?"


@pytest.mark.parametrize("everywhere", [False, True])
def test_missing_single_turn_completion_falls_back_to_completion(tmp_path, caplog, everywhere):
    """As the original recipe: without single_turn_completion (absent, null or blank) the row's completion is
    the ground truth; the preview counts such rows. Without the column at all the schema is still multi-turn."""
    rows = multiturn_rows()
    for i, r in enumerate(rows):
        if everywhere or i == 0:
            r.pop("single_turn_completion")
    if not everywhere:
        rows[4]["single_turn_completion"] = "  "
    src = write_jsonl(tmp_path / "mt.jsonl", rows)
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "rl", "--dataset_type", "rl",
                   "--validation_size", "0") == 0
    train, _, preview = read(tmp_path / "rl", "rl")
    assert preview["schema"] == "multiturn"
    assert preview["ground_truth_from_completion"] == (5 if everywhere else 2)
    assert "have no single_turn_completion" in caplog.text
    truths = {(r["extra_info"]["conv_id"], len(r["prompt"])): r["reward_model"]["ground_truth"]
              for _, r in train.iterrows()}
    assert truths[("7", 2)] == "Which series do you mean?"  # row 0 (the first of its prompt) fell back
    assert truths[("9", 2)] == "Which limit?"
    assert truths[("7", 4)] == ("It is pi^2/6." if everywhere else "The sum is \\boxed{\\pi^2/6}.")
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "sft", "--dataset_type", "sft",
                   "--validation_size", "0") == 0
    assert read(tmp_path / "sft", "sft")[2]["ground_truth_from_completion"] == (5 if everywhere else 2)


def test_validation_split_keeps_conversations_whole(tmp_path):
    src = write_jsonl(tmp_path / "mt.jsonl", multiturn_rows())
    assert run_cli("--dataset", src, "--local_dir", tmp_path, "--dataset_type", "rl", "--validation_size", "1") == 0
    train, val, _ = read(tmp_path, "rl")
    train_convs = set(train["extra_info"].map(lambda e: e["conv_id"]))
    val_convs = set(val["extra_info"].map(lambda e: e["conv_id"]))
    assert len(val_convs) == 1 and not train_convs & val_convs


def test_missing_score_falls_back_to_mr_rewards(tmp_path):
    rows = multiturn_rows()
    for r in rows:
        r.pop("score")
    src = write_jsonl(tmp_path / "mt.jsonl", rows)
    assert run_cli("--dataset", src, "--local_dir", tmp_path, "--dataset_type", "sft", "--validation_size", "0") == 0
    sft, _, _ = read(tmp_path, "sft")
    assert sorted(sft["extra_info"].map(lambda e: e["score"])) == [0.2, 0.9]


def test_real_large_schema_row(tmp_path):
    assert run_cli("--dataset", LARGE_ROW, "--local_dir", tmp_path, "--dataset_type", "rl",
                   "--validation_size", "0") == 0
    train, _, _ = read(tmp_path, "rl")
    row = train.iloc[0]
    source = json.loads(LARGE_ROW.read_text())
    assert list(row["prompt"])[1:] == source["prompt"]
    assert row["ability"] == "writing"  # "medium" in the file name
    info = row["extra_info"]
    assert info["conv_id"] == "795" and info["score"] == pytest.approx(source["score"])
    assert info["interaction_kwargs"]["single_turn_prompt"] == source["single_turn_prompt"]
    assert json.loads(info["metadata"])["single_turn_metadata"]["url"].startswith("https://medium.com/")


def test_local_folder_in_hub_layout_and_save_to_disk(tmp_path):
    import datasets

    hub_like = tmp_path / "collabllm-multiturn-math-hard"
    (hub_like / "data").mkdir(parents=True)
    pd.DataFrame(multiturn_rows()).to_parquet(hub_like / "data" / "train-00000-of-00001.parquet")
    assert run_cli("--dataset", hub_like, "--local_dir", tmp_path / "o1", "--dataset_type", "rl",
                   "--validation_size", "0") == 0
    train, _, _ = read(tmp_path / "o1", "rl")
    assert len(train) == 3 and set(train["data_source"]) == {"collabllm-multiturn-math-hard"}
    assert set(train["ability"]) == {"math"}

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(multiturn_rows())}).save_to_disk(str(saved))
    assert run_cli("--dataset", saved, "--local_dir", tmp_path / "o2", "--dataset_type", "sft",
                   "--validation_size", "0", "--num_proc", "1") == 0
    assert len(read(tmp_path / "o2", "sft")[0]) == 2


def test_hub_name_goes_through_datasets(tmp_path, monkeypatch):
    """Offline, a hub id reaches datasets.load_dataset, which fails for lack of network (not our code): the
    error is datasets' ConnectionError naming the repository."""
    import datasets
    import huggingface_hub

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # both libraries read HF_HUB_OFFLINE once, at import; without these the hub client retries for ~25 s
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"Couldn't reach 'collabllm/collabllm-multiturn-math-hard' on the Hub"):
        process_dataset.process(process_dataset.parse_args(
            ["--dataset", "collabllm/collabllm-multiturn-math-hard", "--local_dir", str(tmp_path / "o"),
             "--dataset_type", "rl"]))
    assert calls and calls[0][0][0] == "collabllm/collabllm-multiturn-math-hard"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("single_turn_prompt", None, "row 3: field 'single_turn_prompt': missing"),
        ("prompt", [{"role": "user", "content": 5}], "row 3: field 'prompt[0].content': expected a string"),
        ("prompt", [{"role": "assistant", "content": "hi"}], "row 3: field 'prompt': the conversation must end"),
        ("completion", "", "row 3: field 'completion': empty"),
    ],
)
def test_bad_row_names_row_and_field_and_writes_nothing(tmp_path, capsys, caplog, field, value, expected):
    rows = multiturn_rows()
    if value is None:
        rows[3].pop(field)
    else:
        rows[3][field] = value
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    assert run_cli("--dataset", src, "--local_dir", out, "--dataset_type", "rl") == 2
    assert expected in caplog.text and str(src) in caplog.text
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # the JSON reader alone said "Unexpected character found when decoding 'null'", naming nothing
        ('{"problem": "What is 2+2?", "solution": nul}',
         "line 3 (row 1): field 'solution': not valid JSON at column 41 (Expecting value); "
         "expected one JSON object per line"),
        ('{"problem": "What is 2+2?", "solution": "4"', "line 3 (row 1): field 'solution': not valid JSON at "
         "column 44 (Expecting ',' delimiter); expected one JSON object per line"),
        ("{problem: 1}", "line 3 (row 1): not valid JSON at column 2 (Expecting property name enclosed in "
         "double quotes); expected one JSON object per line"),
        ("null", "line 3 (row 1): expected a JSON object, got null"),
        ('["What is 2+2?", "4"]', "line 3 (row 1): expected a JSON object, got list"),
    ],
)
def test_malformed_jsonl_line_names_file_line_and_field(tmp_path, caplog, line, expected):
    good = json.dumps({"problem": "What is 1+1?", "solution": "2"})
    src = tmp_path / "bad.jsonl"
    src.write_text(f"{good}\n\n{line}\n{good}\n")  # a blank line counts as a line, not as a row
    out = tmp_path / "out"
    assert run_cli("--dataset", src, "--local_dir", out, "--dataset_type", "rl") == 2
    assert f"{src}: {expected}" in caplog.text
    assert not out.exists() or list(out.iterdir()) == []


def test_malformed_json_array_names_line_and_field(tmp_path):
    from collabllm_verl.recipe.dataset.io import load_source_dataset
    from collabllm_verl.recipe.dataset.rows import JsonLinesError

    src = tmp_path / "rows.json"
    src.write_text('[{"problem": "a", "solution": "b"},\n {"problem": "c", "solution": }]\n')
    with pytest.raises(JsonLinesError, match=r"rows\.json: line 2: field 'solution': not valid JSON at column 31 "
                                              r"\(Expecting value\); expected a JSON array of objects") as info:
        load_source_dataset(str(src))
    assert (info.value.line, info.value.row, info.value.field) == (2, None, "solution")
    src.write_text('[{"problem": "a", "solution": "b"}]')  # a valid array still loads
    assert load_source_dataset(str(src))[0]["solution"] == "b"


def test_malformed_jsonl_in_a_folder_is_named(tmp_path):
    """A folder in hub layout that datasets fails to read: the broken file and line are named."""
    from collabllm_verl.recipe.dataset.io import load_source_dataset
    from collabllm_verl.recipe.dataset.rows import JsonLinesError

    folder = tmp_path / "src" / "data"
    folder.mkdir(parents=True)
    write_jsonl(folder / "train-a.jsonl", multiturn_rows())
    (folder / "train-b.jsonl").write_text('{"prompt": [}\n')
    with pytest.raises(JsonLinesError, match=r"train-b\.jsonl: line 1 \(row 0\): field 'prompt': not valid JSON"):
        load_source_dataset(str(tmp_path / "src"))


@pytest.mark.parametrize(
    ("score", "rewards", "expected"),
    [
        ("high", None, "row 3: field 'score': expected a number (the reply's reward), got str 'high'"),
        (True, None, "row 3: field 'score': expected a number (the reply's reward), got bool True"),
        (None, {"MR": [0.5, "high"]}, "row 3: field \"rewards['MR'][1]\": expected a number (score is missing, "
         "so its mean is the score), got str 'high'"),
        (None, {"accuracy": [1.0]}, "row 3: field 'score': missing (and no rewards['MR'] to fall back on)"),
    ],
)
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_bad_score_names_row_field_and_expectation(tmp_path, caplog, score, rewards, expected, kind):
    """A score of the wrong type is reported as such, not as "missing" (RL keeps no score of a scored row,
    but still checks it; SFT ranks by it, DPO pairs by it)."""
    rows = multiturn_rows()
    rows[3]["score"] = score
    if rewards is not None:
        rows[3]["rewards"] = rewards
    src = write_jsonl(tmp_path / "scores.jsonl", rows)
    out = tmp_path / "out"
    assert run_cli("--dataset", src, "--local_dir", out, "--dataset_type", kind, "--validation_size", "0") == 2
    assert f"{src}: {expected}" in caplog.text
    assert not out.exists() or list(out.iterdir()) == []


def test_nan_score_falls_back_to_mr_rewards(tmp_path):
    rows = multiturn_rows()
    rows[3]["score"] = float("nan")
    rows[3]["rewards"] = {"MR": [0.2, 0.4]}
    src = write_jsonl(tmp_path / "nan.jsonl", rows)
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "o", "--dataset_type", "dpo",
                   "--validation_size", "0") == 0
    train = read(tmp_path / "o", "dpo")[0]
    late = train[train["extra_info"].map(lambda info: info["turn_id"] == 3)].iloc[0]
    assert (late["score_chosen"], late["score_rejected"]) == pytest.approx((0.9, 0.3))


def test_bad_single_turn_field_name(tmp_path, caplog):
    assert run_cli("--dataset", MATH_L5, "--local_dir", tmp_path, "--dataset_type", "rl",
                   "--reference_field", "reference") == 2
    assert "row 0: field 'reference': missing" in caplog.text


def test_system_prompt_carries_the_ten_behaviours():
    """The assistant's system prompt states the original's ten behaviours (in our words) and nothing that
    limits the number of questions or tells the model to start the work before asking."""
    bullets = [line for line in COLLABORATOR_SYSTEM_PROMPT.splitlines() if line.startswith("- ")]
    assert len(bullets) == 10
    text = " ".join(COLLABORATOR_SYSTEM_PROMPT.split()).lower()
    for phrase in (
        "proactive and highly interactive",
        "keep track of everything said earlier",
        "ask for clarification instead of guessing",
        "specific follow-up questions",
        "next steps on your own initiative",
        "reading and typing to a minimum",
        "multiple-choice options",
        "match the person's tone and emotional state",
        "say so honestly and suggest where the answer could be found",
        "keep inviting feedback",
    ):
        assert phrase in text, phrase
    for absent in ("one or two", "right away", "before doing the work"):
        assert absent not in text


def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("pre-existing")
    real = pd.DataFrame.to_parquet
    written = []

    def flaky(self, path, *a, **k):
        if written:
            raise OSError("disk full")
        written.append(path)
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    with pytest.raises(OSError, match=r"^disk full$"):
        process_dataset.process(process_dataset.parse_args(
            ["--dataset", str(MATH_L5), "--local_dir", str(out), "--dataset_type", "rl"]))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("size", ["-1", "1.5", "200"])
def test_impossible_validation_size(tmp_path, size, caplog):
    assert run_cli("--dataset", MATH_L5, "--local_dir", tmp_path, "--dataset_type", "rl",
                   "--validation_size", size) == 2
    assert "--validation_size" in caplog.text


def test_script_runs_from_any_directory(tmp_path):
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "process_dataset.py"), "--dataset", str(MATH_L5),
         "--local_dir", str(tmp_path), "--dataset_type", "sft"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sft_train.parquet").exists()


# ------------------------------------------------------------- system-prompt share and the SFT score floor


def test_sft_min_score_keeps_conversations_reaching_the_floor(tmp_path, caplog):
    """Conversation 7's chosen reply scores 0.9, conversation 9's 0.2: a floor of 0.5 keeps 7 only, a floor
    equal to a score keeps that conversation (score >= floor), a floor above both is an error."""
    src = write_jsonl(tmp_path / "mt.jsonl", multiturn_rows())
    for floor, expected in (("0.5", {"7"}), ("0.2", {"7", "9"}), ("-1", {"7", "9"})):
        out = tmp_path / f"sft{floor}"
        assert run_cli("--dataset", src, "--local_dir", out, "--dataset_type", "sft", "--validation_size", "0",
                       "--sft_min_score", floor) == 0
        sft, _, preview = read(out, "sft")
        assert {row["extra_info"]["conv_id"] for _, row in sft.iterrows()} == expected
        assert preview["sft_min_score"] == float(floor)
    # a reward list instead of the score, averaged as the original filter does
    for field, floor, expected in (("rewards.MR", "0.5", {"7"}), ("rewards.accuracy", "1", {"7", "9"})):
        out = tmp_path / f"sft-{field}"
        assert run_cli("--dataset", src, "--local_dir", out, "--dataset_type", "sft", "--validation_size", "0",
                       "--sft_min_score", floor, "--sft_score_field", field) == 0
        assert {row["extra_info"]["conv_id"] for _, row in read(out, "sft")[0].iterrows()} == expected
    caplog.clear()
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "bleu", "--dataset_type", "sft",
                   "--sft_min_score", "0.5", "--sft_score_field", "rewards.bleu") == 2
    assert "row 2: field \"rewards['bleu']\": missing or without a number" in caplog.text
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "bad", "--dataset_type", "sft",
                   "--sft_min_score", "0.5", "--sft_score_field", "accuracy") == 2
    assert "--sft_score_field must be 'score' or 'rewards.<metric>'" in caplog.text
    caplog.clear()
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "none", "--dataset_type", "sft",
                   "--sft_min_score", "0.95") == 2
    assert "no conversation reaches --sft_min_score 0.95" in caplog.text
    assert run_cli("--dataset", src, "--local_dir", tmp_path / "rl", "--dataset_type", "rl",
                   "--sft_min_score", "0.5") == 2
    assert "--sft_min_score applies to --dataset_type sft only" in caplog.text
    assert run_cli("--dataset", MATH_L5, "--local_dir", tmp_path / "st", "--dataset_type", "sft",
                   "--sft_min_score", "0.5") == 2
    assert "needs scored rows" in caplog.text


def test_add_system_prompt_ratio_is_a_seeded_share_of_rows(tmp_path, caplog):
    """Of the 134 MATH level-5 RL rows, int(134 * 0.25) = 33 keep the system prompt; the others start with
    the user; the same seed picks the same rows, another seed others; 0 and 1 give none and all."""
    def prompted(out: Path, *extra: str) -> set[str]:
        assert run_cli("--dataset", MATH_L5, "--local_dir", out, "--dataset_type", "rl", *extra) == 0
        train, val, preview = read(out, "rl")
        rows = pd.concat([train, val])
        assert len(rows) == 134
        firsts = [next(iter(p)) for p in rows["prompt"]]
        assert all(m["role"] == "user" for m in firsts if m["role"] != "system")
        with_prompt = {r["extra_info"]["single_turn_prompt"] for r, m in zip(rows.to_dict("records"), firsts,
                                                                             strict=True) if m["role"] == "system"}
        assert preview["rows_with_system_prompt"] == len(with_prompt)
        return with_prompt

    quarter = prompted(tmp_path / "a", "--add_system_prompt_ratio", "0.25")
    assert len(quarter) == 33
    assert prompted(tmp_path / "b", "--add_system_prompt_ratio", "0.25") == quarter
    assert prompted(tmp_path / "c", "--add_system_prompt_ratio", "0.25", "--seed", "7") != quarter
    assert prompted(tmp_path / "d", "--add_system_prompt_ratio", "0") == set()
    assert len(prompted(tmp_path / "e")) == 134
    caplog.clear()
    assert run_cli("--dataset", MATH_L5, "--local_dir", tmp_path / "f", "--dataset_type", "rl",
                   "--add_system_prompt_ratio", "1.5") == 2
    assert "--add_system_prompt_ratio must be in [0, 1]" in caplog.text


def test_add_system_prompt_ratio_on_sft_and_dpo_rows(tmp_path):
    src = write_jsonl(tmp_path / "mt.jsonl", multiturn_rows())
    for kind, key in (("sft", "messages"), ("dpo", "prompt")):
        out = tmp_path / kind
        assert run_cli("--dataset", src, "--local_dir", out, "--dataset_type", kind, "--validation_size", "0",
                       "--add_system_prompt_ratio", "0") == 0
        rows, _, _ = read(out, kind)
        assert len(rows) and all(next(iter(r))["role"] == "user" for r in rows[key])
