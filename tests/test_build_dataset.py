"""build_dataset.py (the data engine) on the bundled MATH problems, through the real CLI, litellm over HTTP
and the local server's scripted user, assistant and judges: openers, full conversations (schema, ranking,
the next-turn rule), the round trip through process_dataset.py, failure reporting and resume after a kill.

The scripted assistant asks a clarifying question when a collaborative system prompt (the proactive
instruction) tells it to and the request looks vague, and answers right away otherwise; the scripted judges
score that difference (interactivity), so candidates get different MRs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import tiktoken
from litellm.litellm_core_utils import default_encoding  # noqa: F401  (tiktoken reads litellm's bundled file)

import build_dataset
import process_dataset
from collabllm_verl.interactions.simulator_prompt import build_simulator_messages
from collabllm_verl.metrics.presets import preset
from collabllm_verl.recipe.data_engine.candidates import ScoredCandidate, candidate_score
from collabllm_verl.recipe.data_engine.config import PROACTIVE_INSTRUCTION, EngineConfig
from collabllm_verl.recipe.data_engine.conversation import END_NO_USER_TURN, next_user_turn
from collabllm_verl.recipe.data_engine.schema import MULTITURN_COLUMNS, OPENER_COLUMNS
from collabllm_verl.recipe.data_engine.task import TaskFailure
from collabllm_verl.recipe.dataset.source import GENERIC_TASK, task_for
from collabllm_verl.recipe.offline.scripted_assistant import scripted_assistant_reply
from collabllm_verl.recipe.offline.scripted_user import vague_opener

REPO = Path(__file__).resolve().parents[1]
MATH_L5 = REPO / "data" / "math" / "math500_level5.jsonl"
SOURCE = [json.loads(line) for line in MATH_L5.read_text().splitlines()]
SIGNAL = "[[TERMINATE CHAT]]"
KEY_ENV = "BUILD_DATASET_TEST_KEY"
CL100K = tiktoken.get_encoding("cl100k_base")
SCRIPTED = ("--user_model", "openai/scripted-user", "--assistant_model", "openai/scripted-assistant",
            "--judge_model", "openai/scripted-judge")


@pytest.fixture
def cli(llm_server, monkeypatch):
    """Run build_dataset.py's entry point against the test server; returns (exit code, stdout)."""
    monkeypatch.setenv(KEY_ENV, "local")

    def run(*args) -> int:
        argv = [str(a) for a in args] + ["--api_base", llm_server.base_url, "--api_key_env", KEY_ENV, "--no_progress"]
        return build_dataset.main(argv)

    return run


def _rows(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "train.parquet")


def _process(source: Path, out: Path, kind: str, *extra) -> int:
    return process_dataset.main(
        ["--dataset", str(source), "--local_dir", str(out), "--dataset_type", kind, "--validation_size", "0",
         *map(str, extra)]
    )


# ------------------------------------------------------------------------------------------------ openers


def test_openers_are_vague_simulated_first_turns_that_become_rl_prompts(cli, llm_server, tmp_path):
    out = tmp_path / "openers"
    assert cli("--dataset", MATH_L5, "--mode", "openers", "--user_model", "openai/scripted-user",
               "--max_rows", 5, "--local_dir", out) == 0
    assert llm_server.stats()["model:scripted-user"] == 5  # one simulator call per task
    rows = _rows(out)
    assert list(rows.columns) == list(OPENER_COLUMNS) and len(rows) == 5
    for _, row in rows.iterrows():
        source = SOURCE[row["conv_id"]]
        prompt = list(row["prompt"])
        assert len(prompt) == 1 and prompt[0]["role"] == "user"
        assert prompt[0]["content"] == vague_opener(source["problem"])  # written by the (scripted) simulator
        assert source["problem"] not in prompt[0]["content"]
        assert row["turn_id"] == 1 and row["completion"] is None and row["score"] is None
        assert row["single_turn_prompt"] == source["problem"]
        assert row["single_turn_completion"] == source["solution"]
        assert row["single_turn_metadata"]["answer"] == source["answer"]
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert manifest["status"] == "complete" and manifest["summary"]["finished"] == 5
    assert manifest["summary"]["llm"]["user_simulator"]["calls"] == 5

    # process_dataset.py reads the folder unchanged: the opener is the RL prompt, the problem the hidden goal
    assert _process(out, tmp_path / "rl", "rl") == 0
    rl = pd.read_parquet(tmp_path / "rl" / "rl_train.parquet")
    assert len(rl) == 5 and set(rl["ability"]) == {"math"} and set(rl["data_source"]) == {"math500_level5"}
    for _, row in rl.iterrows():
        prompt = list(row["prompt"])
        assert prompt[0]["role"] == "system" and prompt[-1]["content"].startswith("hi, I need some help")
        kwargs = row["extra_info"]["interaction_kwargs"]
        assert kwargs["single_turn_prompt"] == SOURCE[row["extra_info"]["index"]]["problem"]
        assert "math" in kwargs["task_desc"]  # the task description travels in the manifest
        assert row["extra_info"]["answer"] == SOURCE[row["extra_info"]["index"]]["answer"]
    # an opener has no assistant reply: SFT and DPO refuse it, naming the row and the field
    assert _process(out, tmp_path / "sft", "sft") == 2
    assert _process(out, tmp_path / "dpo", "dpo") == 2


def test_single_turn_processing_warns_that_prompts_hold_the_whole_task(tmp_path, caplog):
    assert _process(MATH_L5, tmp_path, "rl", "--max_rows", 3) == 0
    assert "every prompt holds the whole task" in caplog.text and "build_dataset.py --mode openers" in caplog.text


# ------------------------------------------------------------------------------------------ conversations


def _training_mr(rewards: dict, weights: dict) -> float:
    """sum over metrics of clamp(w * mean over the conversations, -1, 1) (None values dropped)."""
    total = 0.0
    for name, weight in weights.items():
        values = [v for v in rewards[name] if v is not None]
        total += max(-1.0, min(1.0, weight * sum(values) / len(values)))
    return total


@pytest.fixture
def conversations(cli, tmp_path):
    out = tmp_path / "conversations"
    assert cli("--dataset", MATH_L5, "--mode", "conversations", *SCRIPTED, "--max_rows", 2, "--local_dir", out) == 0
    return out


def test_conversation_rows_follow_the_published_schema_and_the_mr(conversations):
    rows = _rows(conversations)
    assert list(rows.columns) == list(MULTITURN_COLUMNS)
    weights = preset("math")["metric_weights"]
    assert set(rows["conv_id"]) == {0, 1}
    checked_history = False
    for _, row in rows.iterrows():
        prompt = list(row["prompt"])
        assert row["turn_id"] == len(prompt) and prompt[-1]["role"] == "user"
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]
        rewards = {k: list(v) for k, v in row["rewards"].items()}
        assert set(rewards) == {*weights, "MR"}
        sessions = [list(s) for s in row["sessions"]]
        assert len(sessions) == 3  # S
        for index, session in enumerate(sessions):
            assert session[: len(prompt)] == prompt and session[len(prompt)]["content"] == row["completion"]
            assert len(session) <= len(prompt) + 1 + 4 + 1  # max_new_turns (+ a kept terminating message)
            per_session = sum(weights[name] * rewards[name][index] for name in weights)
            assert rewards["MR"][index] == pytest.approx(per_session)  # the original's per-session MR
        assert all(len(rewards[name]) == 3 for name in weights)  # raw per-conversation values
        assert row["score"] == pytest.approx(sum(rewards["MR"]) / 3)  # the original: mean of per-session MR
        assert row["single_turn_prompt"] == SOURCE[row["conv_id"]]["problem"]
        # token_amount as the authors' data engine: thousands of cl100k assistant tokens of the whole session
        for index, session in enumerate(sessions):
            tokens = sum(len(CL100K.encode(m["content"])) for m in session if m["role"] == "assistant")
            assert rewards["token_amount"][index] == pytest.approx(tokens / 1000)
        if row["turn_id"] > 1:
            checked_history = True  # the history holds an assistant turn whose tokens count
    assert checked_history


def test_best_candidate_continues_and_next_user_turn_comes_from_its_longest_future(conversations, llm_server):
    rows = _rows(conversations)
    for _, conv in rows.groupby("conv_id"):
        turns = sorted(set(conv["turn_id"]))
        assert turns[0] == 1 and len(turns) >= 2
        first = conv[conv["turn_id"] == 1]
        assert len(first) == 3  # K candidates, all kept
        # floor(3 / 2) = 1 proactive candidate (the first): it asks a question and wins over the direct answers
        completions = list(first["completion"])
        assert "?" in completions[0] and "?" not in completions[1] and "?" not in completions[2]
        assert first["score"].iloc[0] > first["score"].iloc[2]
        for earlier, later in itertools.pairwise(turns):
            candidates = conv[conv["turn_id"] == earlier].reset_index(drop=True)
            best = int(candidates["score"].to_numpy().argmax())  # first of equal scores
            prompt = list(candidates.loc[best, "prompt"])
            sessions = [list(s) for s in candidates.loc[best, "sessions"]]
            longest = max(reversed(sessions), key=len)  # the last of equally long ones
            next_prompt = list(conv[conv["turn_id"] == later].iloc[0]["prompt"])
            assert next_prompt[: len(prompt)] == prompt
            assert next_prompt[len(prompt)] == {"role": "assistant", "content": candidates.loc[best, "completion"]}
            assert next_prompt[len(prompt) + 1] == longest[len(prompt) + 1]
            assert later == len(prompt) + 2
    manifest = json.loads((conversations / "build_dataset.json").read_text())
    assert manifest["search"]["num_proactive"] == 1 and manifest["summary"]["conversations"] == 2
    # the proactive instruction is the only system message of one candidate per turn, never added to another
    # prompt; the other candidates and the forward-sampled assistant turns run without a system message
    assistant_calls = [r["messages"] for r in llm_server.received if r["model"] == "scripted-assistant"]
    with_system = [m for m in assistant_calls if any(x["role"] == "system" for x in m)]
    assert all(m[0] == {"role": "system", "content": PROACTIVE_INSTRUCTION} for m in with_system)
    assert all(sum(x["role"] == "system" for x in m) == 1 for m in with_system)
    assert len(with_system) == rows[["conv_id", "turn_id"]].drop_duplicates().shape[0]
    # candidates and forward-sampled assistant turns: temperature 0.8, at most 2048 tokens (the original's)
    assistant_requests = [r for r in llm_server.received if r["model"] == "scripted-assistant"]
    assert {(r.get("temperature"), r.get("max_tokens")) for r in assistant_requests} == {(0.8, 2048)}
    # the scripted user ends the chat after an answer
    assert manifest["summary"]["end_reasons"] == {"terminated": 2}
    purposes = {"user_simulator", "assistant:candidate", "assistant:future", "judge:accuracy", "judge:interactivity"}
    assert purposes <= set(manifest["summary"]["llm"])


def test_conversations_round_trip_through_process_dataset(conversations, tmp_path):
    rows = _rows(conversations)
    assert _process(conversations, tmp_path / "rl", "rl") == 0
    rl = pd.read_parquet(tmp_path / "rl" / "rl_train.parquet")
    assert len(rl) == rows["prompt"].map(lambda p: json.dumps(list(p))).nunique()  # one per distinct prefix

    assert _process(conversations, tmp_path / "sft", "sft") == 0
    sft = pd.read_parquet(tmp_path / "sft" / "sft_train.parquet")
    assert len(sft) == 2
    for _, row in sft.iterrows():
        conv = rows[rows["conv_id"] == int(row["extra_info"]["conv_id"])]
        last = conv[conv["turn_id"] == conv["turn_id"].max()]
        assert list(row["messages"])[-1]["content"] == last.loc[last["score"].idxmax(), "completion"]

    assert _process(conversations, tmp_path / "dpo", "dpo") == 0
    dpo = pd.read_parquet(tmp_path / "dpo" / "dpo_train.parquet")
    assert len(dpo) >= 2  # at least the first turn of each conversation
    for _, pair in dpo.iterrows():
        turn = rows[(rows["conv_id"] == int(pair["extra_info"]["conv_id"]))
                    & (rows["turn_id"] == pair["extra_info"]["turn_id"])]
        assert pair["score_chosen"] == pytest.approx(turn["score"].max())
        assert pair["score_rejected"] == pytest.approx(turn["score"].min())
        assert pair["score_chosen"] - pair["score_rejected"] >= 0.02
        assert list(pair["prompt"])[1:] == list(turn.iloc[0]["prompt"])


# ----------------------------------------------------------------------------------- failures and resume


def test_failed_task_is_retried_reported_and_never_written(cli, llm_server, tmp_path):
    """The scripted judges answer prose for a conversation holding the malformed marker: every judged metric
    fails on every forward-sampled conversation of that task, which is retried once, then reported."""
    source = tmp_path / "math.jsonl"
    problems = [dict(SOURCE[i]) for i in range(3)]
    problems[1]["problem"] = "[[judge:malformed]] " + problems[1]["problem"]
    source.write_text("".join(json.dumps(p) + "\n" for p in problems))
    out = tmp_path / "out"
    code = cli("--dataset", source, "--mode", "conversations", *SCRIPTED, "--num_retries", 0,
               "--task_desc", "math problem", "--local_dir", out)
    assert code == 1
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["conv_id"], f["attempts"]) for f in failures] == [(1, 2)]
    assert "failed on every forward-sampled conversation" in failures[0]["error"]
    rows = _rows(out)
    assert set(rows["conv_id"]) == {0, 2}  # nothing of the failed task, no silent zeros
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["summary"]["failed"] == 1


def test_simulator_failure_of_an_opener_is_retried(cli, llm_server, tmp_path):
    """Two server errors in a row (no LLM-layer retries) fail the first task's opener twice: reported. The
    same command then retries only that task."""
    llm_server.inject("server_error", "server_error")
    out = tmp_path / "openers"
    args = ("--dataset", MATH_L5, "--mode", "openers", "--user_model", "openai/scripted-user", "--max_rows", 3,
            "--num_retries", 0, "--max_concurrent_tasks", 1, "--local_dir", out)
    assert cli(*args) == 1
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["conv_id"], f["attempts"]) for f in failures] == [(0, 2)]
    assert set(_rows(out)["conv_id"]) == {1, 2}
    before = llm_server.stats()["model:scripted-user"]
    assert cli(*args) == 0
    assert llm_server.stats()["model:scripted-user"] - before == 1  # only the failed task ran again
    assert set(_rows(out)["conv_id"]) == {0, 1, 2} and not (out / "failures.jsonl").exists()


def test_the_failure_budget_stops_the_run_and_keeps_what_finished(cli, llm_server, tmp_path, capsys):
    """With --failure_budget 0.3 the first failed task of three (1 > 0.9) stops the run: exit 1, the manifest
    says "stopped" with the reason, the failure is listed, nothing else started; the same command then
    finishes every task."""
    llm_server.inject("server_error")
    out = tmp_path / "openers"
    args = ("--dataset", MATH_L5, "--mode", "openers", "--user_model", "openai/scripted-user", "--max_rows", 3,
            "--num_retries", 0, "--task_retries", 0, "--max_concurrent_tasks", 1, "--failure_budget", 0.3,
            "--local_dir", out)
    assert cli(*args) == 1
    assert "stopped: 1 of the 3 tasks of this run failed" in capsys.readouterr().out
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert manifest["status"] == "stopped" and "failure budget of 30%" in manifest["summary"]["stopped"]
    assert manifest["summary"]["failed"] == 1 and manifest["summary"]["finished"] == 0
    assert [f["conv_id"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())] == [0]
    assert llm_server.stats()["model:scripted-user"] == 1 and not (out / "train.parquet").exists()
    assert cli(*args) == 0
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert manifest["status"] == "complete" and "stopped" not in manifest["summary"]
    assert set(_rows(out)["conv_id"]) == {0, 1, 2}


def test_resume_after_a_kill_keeps_finished_conversations(llm_server, tmp_path, monkeypatch):
    """A run killed with SIGKILL mid-way leaves its finished conversations on disk; the same command then
    finishes the others only, and the dataset holds every conversation once."""
    llm_server.configure(latency_ms=40)
    out = tmp_path / "resume"
    argv = [sys.executable, str(REPO / "build_dataset.py"), "--dataset", str(MATH_L5), "--mode", "conversations",
            *SCRIPTED, "--max_rows", "6", "--max_concurrent_tasks", "1", "--local_dir", str(out),
            "--api_base", llm_server.base_url, "--api_key_env", KEY_ENV, "--no_progress"]
    env = {**os.environ, KEY_ENV: "local", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = out / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert not (out / "train.parquet").exists()
    finished = [json.loads(line) for line in records.read_bytes().split(b"\n")[:-1]]  # complete lines only
    assert 2 <= len(finished) < 6

    llm_server.configure(latency_ms=0)
    monkeypatch.setenv(KEY_ENV, "local")
    assert build_dataset.main(argv[2:]) == 0
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert manifest["summary"]["resumed"] == len(finished)
    assert manifest["summary"]["finished"] == 6 - len(finished)
    rows = _rows(out)
    assert sorted(set(rows["conv_id"])) == list(range(6))
    kept = {r["conv_id"]: r["rows"] for r in finished}
    for conv_id, conv_rows in kept.items():  # the conversations of the killed run are kept as written
        assert list(rows[rows["conv_id"] == conv_id]["completion"]) == [r["completion"] for r in conv_rows]
    assert len(rows) == sum(len(r["rows"]) for r in map(json.loads, records.read_text().splitlines()))


# --------------------------------------------------------------------------------------------- the parts


def test_scripted_assistant_asks_only_when_told_to_and_the_request_is_vague():
    vague = [{"role": "user", "content": vague_opener(SOURCE[0]["problem"])}]
    proactive = [{"role": "system", "content": PROACTIVE_INSTRUCTION}, *vague]
    question = scripted_assistant_reply(proactive)
    assert "?" in question and "I suggest" in question
    assert "?" not in scripted_assistant_reply(vague) and "\\boxed{" in scripted_assistant_reply(vague)
    # once it has asked, or when the request is complete, it answers (with a suggestion)
    asked = [*proactive, {"role": "assistant", "content": question}, {"role": "user", "content": "x is 4"}]
    answer = scripted_assistant_reply(asked)
    assert "?" not in answer and "\\boxed{4}" in answer and "I suggest" in answer
    full = [proactive[0], {"role": "user", "content": SOURCE[0]["problem"]}]
    assert "?" not in scripted_assistant_reply(full)
    with pytest.raises(ValueError, match="scripted-assistant: the chat holds no user message"):
        scripted_assistant_reply([{"role": "system", "content": "hi"}])


def test_next_user_turn_rule():
    prompt = [{"role": "user", "content": "help"}]
    reply = {"role": "assistant", "content": "Which one?"}

    def session(*texts):
        return [*prompt, reply, *({"role": r, "content": t} for r, t in texts)]

    candidate = ScoredCandidate(
        completion="Which one?",
        proactive=True,
        score=0.5,
        sessions=[session(("user", "short")), session(("user", "long"), ("assistant", "ok"), ("user", "more")),
                  session(("user", "tie"), ("assistant", "ok"), ("user", "x"))],
        end_reasons=["terminated", "turn_limit", "turn_limit"],
    )
    assert next_user_turn(candidate, 2) == ("tie", None)  # the longest, the last of equal length (the original)
    candidate.sessions.append(session(("user", "shorter again")))
    assert next_user_turn(candidate, 2) == ("tie", None)
    ended = ScoredCandidate(completion="a", proactive=False, score=0.1, sessions=[[*prompt, reply]] * 2,
                            end_reasons=["terminated", "turn_limit"])
    assert next_user_turn(ended, 2) == (None, END_NO_USER_TURN)  # the last longest did not terminate
    ended.end_reasons = ["turn_limit", "terminated"]
    assert next_user_turn(ended, 2) == (None, "terminated")
    assert next_user_turn(ScoredCandidate(completion="a", proactive=False, score=-1.0), 2) == (None, END_NO_USER_TURN)


def test_engine_config_validates_and_maps_flags():
    config = EngineConfig()
    assert (config.num_candidates, config.num_samples, config.max_new_turns, config.max_total_turns) == (3, 3, 4, 14)
    assert config.num_proactive == 1  # floor(K / 2), as the original: 1 of 3
    assert config.candidate_system_prompt(0) == PROACTIVE_INSTRUCTION and config.candidate_system_prompt(1) is None
    assert [EngineConfig(num_candidates=k).num_proactive for k in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2]
    assert EngineConfig(num_candidates=3, proactive_share=2 / 3).num_proactive == 2
    assert EngineConfig(num_candidates=3, proactive_share=1.0).num_proactive == 3
    limits = config.future_limits()
    assert (limits.max_user_turns, limits.max_assistant_turns) == (2, 3)  # candidate, U, A, U, A
    # a separate instruction: in place of the system prompt, never appended to it
    nice = EngineConfig(num_candidates=4, proactive_share=0.25, system_prompt="Be nice.")
    assert nice.candidate_system_prompt(0) == PROACTIVE_INSTRUCTION and nice.candidate_system_prompt(1) == "Be nice."
    for bad in ({"max_new_turns": 3}, {"num_candidates": 0}, {"proactive_share": 1.5}, {"max_total_turns": 1}):
        with pytest.raises(ValueError, match=rf"^--{next(iter(bad))} must be "):
            EngineConfig(**bad)


def test_cli_errors_name_the_problem(cli, tmp_path, caplog):
    multiturn = REPO / "data" / "collabllm" / "collabllm_multiturn_medium_large_rows.jsonl"
    assert cli("--dataset", multiturn, "--mode", "openers", "--local_dir", tmp_path / "a") == 2
    assert "needs a single-turn source" in caplog.text
    assert cli("--dataset", MATH_L5, "--mode", "conversations", *SCRIPTED, "--metric_weights", "nope=1",
               "--max_rows", 1, "--local_dir", tmp_path / "b") == 2
    assert "nope" in caplog.text
    assert cli("--dataset", MATH_L5, "--mode", "conversations", *SCRIPTED, "--max_new_turns", 3,
               "--max_rows", 1, "--local_dir", tmp_path / "c") == 2
    assert "--max_new_turns must be an even number" in caplog.text
    assert cli("--dataset", MATH_L5, "--mode", "openers", "--user_model", "openai/scripted-user", "--max_rows", 1,
               "--local_dir", tmp_path / "d") == 0
    assert cli("--dataset", MATH_L5, "--mode", "conversations", *SCRIPTED, "--max_rows", 1,
               "--local_dir", tmp_path / "d") == 2
    assert "holds a --mode openers run" in caplog.text


def test_task_descriptions_are_short_task_type_labels_as_the_originals():
    """fidelity.md 1.17: the simulator's task description names the task type (the verl recipe: a math label;
    the authors' code: one label per dataset), never a sentence about what the user wants."""
    expected = {
        "collabllm/collabllm-multiturn-math-hard": ("math", "math problem solving"),
        "lighteval/MATH-Hard": ("math", "math problem solving"),
        "collabllm/collabllm-multiturn-medium-large": ("writing", "editing a document"),
        "bigcode/bigcodebench": ("coding", "generating code"),
        "someone/unknown-set": GENERIC_TASK,
    }
    for dataset, task in expected.items():
        assert task_for(dataset, None) == task
        assert len(task[1].split()) <= 6 and "user" not in task[1] and not task[1].endswith(".")
    assert task_for("lighteval/MATH-Hard", "algebra homework") == ("math", "algebra homework")
    # what the simulator is shown
    prompt = build_simulator_messages(
        goal="Solve x + 1 = 3.", task_desc=task_for(str(MATH_L5), None)[1], history=[], termination_signal=SIGNAL
    )
    assert "Task type: math problem solving\n" in "\n".join(m["content"] for m in prompt)


def test_score_aggregation_original_by_default_training_as_an_option(cli, tmp_path):
    """fidelity.md 7: a candidate's score is the original's mean of per-session MR (no clamp) by default; the
    option ``--score_aggregation training`` gives the RL reward."""
    out = tmp_path / "training"
    assert cli("--dataset", MATH_L5, "--mode", "conversations", *SCRIPTED, "--max_rows", 1,
               "--score_aggregation", "training", "--local_dir", out) == 0
    weights = preset("math")["metric_weights"]
    rows = _rows(out)
    for _, row in rows.iterrows():
        rewards = {name: list(values) for name, values in row["rewards"].items()}
        assert row["score"] == pytest.approx(_training_mr(rewards, weights))
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert manifest["reward"]["score_aggregation"] == "training" and "clamp" in manifest["reward"]["score"]
    # where a clamp binds the two differ: the original keeps the size of a long session's penalty
    sessions = [-1.5, -1.5, 0.3, None]  # per-session MR; None: a metric failed in that conversation
    trained = SimpleNamespace(reward=-0.7)
    assert candidate_score("original", trained, sessions, turn=1) == pytest.approx(-0.9)
    assert candidate_score("training", trained, sessions, turn=1) == -0.7
    assert candidate_score("original", SimpleNamespace(reward=-1.0), [], turn=1) == -1.0  # skipped reply
    with pytest.raises(TaskFailure, match="every metric"):
        candidate_score("original", trained, [None, None], turn=3)
    with pytest.raises(ValueError, match="--score_aggregation"):
        EngineConfig(score_aggregation="median")


# ------------------------------------------------------------------------------------------- adaptors


def test_adaptor_source_gives_openers_that_keep_the_tasks_metadata(cli, tmp_path):
    """build_dataset.py reads a raw source through --adaptor (BigCodeBench's published rows): the opener rows
    keep the task's tests, entry point and code_prompt, and back through process_dataset.py pass_rate finds
    them; the adaptor's task description and ability travel in the manifest."""
    from collabllm_verl.metrics.pass_rate import find_task
    from collabllm_verl.recipe.dataset.source import adaptor_task

    source = Path(__file__).resolve().parents[1] / "data" / "bigcodebench" / "bigcodebench_tasks.jsonl"
    raw = {r["task_id"]: r for r in map(json.loads, source.read_text().splitlines())}
    out = tmp_path / "openers"
    assert cli("--dataset", source, "--adaptor", "bigcodebench", "--split", "test", "--mode", "openers",
               "--user_model", "openai/scripted-user", "--max_rows", 2, "--local_dir", out) == 0
    manifest = json.loads((out / "build_dataset.json").read_text())
    assert (manifest["ability"], manifest["task_desc"]) == adaptor_task("bigcodebench")
    assert _process(out, tmp_path / "rl", "rl") == 0
    rl = pd.read_parquet(tmp_path / "rl" / "rl_train.parquet")
    assert len(rl) == 2 and set(rl["ability"]) == {"coding"}
    for _, row in rl.iterrows():
        task = find_task(row["reward_model"]["ground_truth"], row["extra_info"])
        assert task["code_prompt"] == raw[task["task_id"]]["code_prompt"]
        assert row["reward_model"]["ground_truth"].startswith(raw[task["task_id"]]["code_prompt"])
