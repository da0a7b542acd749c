"""The ambiguity-controlled family end to end, without a model: the generator and its shipped files, the rows
through process_dataset.py and evaluate.py (opener as first turn), the scripted ambiguity user over HTTP,
the shared ask detector, the must_contain metric and the reward-quality diagnostics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import litellm
import pandas as pd
import pytest

import evaluate
import process_dataset
from collabllm_verl.interactions.simulator_prompt import build_simulator_messages
from collabllm_verl.metrics import MetricContext, resolve_metrics
from collabllm_verl.metrics.asks_question import asks_a_question
from collabllm_verl.recipe.core.reward_diagnostics import (
    ask_rates,
    conversation_diagnostics,
    copies_goal,
    equal_reward_share,
    response_diagnostics,
    score_spread,
)
from collabllm_verl.recipe.dataset.ambiguity_family import (
    TEMPLATES,
    generate_rows,
    validate_row,
    write_family,
)
from collabllm_verl.recipe.dataset.rows import DatasetFormatError
from collabllm_verl.recipe.offline import scripted_ambiguity_user as user
from collabllm_verl.recipe.offline.server import register_responder

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {split: ROOT / "data" / "ambiguity" / f"ambiguity_{split}.jsonl" for split in ("heldin", "heldout")}
TERMINATE = "[[TERMINATE CHAT]]"
ASK = "Sure, I can help with that. Could you tell me the detail you have in mind?"


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in SHIPPED[split].read_text().splitlines()]


# ----------------------------------------------------------------------------------------- the family
def test_shipped_files_are_what_the_generator_writes_and_follow_the_schema(tmp_path):
    written = write_family(tmp_path)
    for split, path in written.items():
        assert path.read_bytes() == SHIPPED[split].read_bytes(), f"data/ambiguity is stale for {split}"
        rows = _rows(split)
        assert [list(r) for r in rows] == [list(generate_rows(split)[0])] * len(rows)
        for index, row in enumerate(rows):
            validate_row(row, index=index)
            if row["ambiguous"]:
                # the detail is in the goal and the clarification, never in the opener
                assert all(
                    s in row["single_turn_prompt"] and s in row["clarification"] for s in row["must_contain"]
                )
                assert not any(s.lower() in row["opener"].lower() for s in row["must_contain"])
            else:
                assert row["opener"] == row["single_turn_prompt"] and row["clarification"] is None
        assert sum(r["ambiguous"] for r in rows) == len(rows) // 2
        assert (
            len({r["id"] for r in rows})
            == len({(r["single_turn_prompt"], r["opener"]) for r in rows})
            == len(rows)
        )
    heldin, heldout = _rows("heldin"), _rows("heldout")
    assert not {r["opener"] for r in heldin} & {r["opener"] for r in heldout}
    assert not {t.full for t in TEMPLATES["heldin"]} & {t.full for t in TEMPLATES["heldout"]}
    assert generate_rows("heldin", seed=1) != generate_rows("heldin", seed=0)


def test_validate_row_names_the_field():
    row = dict(_rows("heldin")[1])
    with pytest.raises(DatasetFormatError, match=r"row 3: field 'clarification'"):
        validate_row({**row, "ambiguous": True, "clarification": None}, source="f.jsonl", index=3)
    with pytest.raises(DatasetFormatError, match="field 'must_contain'"):
        validate_row({**row, "must_contain": []})
    with pytest.raises(DatasetFormatError, match="field 'opener'"):
        validate_row({**row, "ambiguous": False, "clarification": None, "opener": "something else"})


def test_process_dataset_rl_takes_the_file_as_it_is(tmp_path):
    out = tmp_path / "rl"
    code = process_dataset.main(
        [
            "--dataset",
            str(SHIPPED["heldin"]),
            "--local_dir",
            str(out),
            "--dataset_type",
            "rl",
            "--validation_size",
            "0",
        ]
    )
    assert code == 0
    frame = pd.read_parquet(out / "rl_train.parquet")
    rows = _rows("heldin")
    assert len(frame) == len(rows)
    for (_, got), row in zip(frame.iterrows(), rows, strict=True):
        assert [m["role"] for m in got["prompt"]] == ["system", "user"]
        assert got["prompt"][1]["content"] == row["opener"]  # the opener is the first user turn
        kwargs = got["extra_info"]["interaction_kwargs"]
        assert kwargs["single_turn_prompt"] == row["single_turn_prompt"]  # the complete request stays hidden
        assert kwargs["task_desc"] == row["task_desc"]
        assert list(got["reward_model"]["ground_truth"]) == row["must_contain"]
        assert bool(got["extra_info"]["ambiguous"]) is row["ambiguous"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[1], "must_contain": "Keiko"}) + "\n")
    assert (
        process_dataset.main(
            ["--dataset", str(bad), "--local_dir", str(tmp_path / "b"), "--dataset_type", "rl"]
        )
        == 2
    )


# ----------------------------------------------------------------------------------------- ask detector
@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("Could you tell me your colleague's name?", True),
        ("Sure! Which day is the meeting?", True),
        ("Please let me know the topic of your post.", True),  # an imperative request, no question mark
        ("Dear Keiko, thank you so much for all your help this week. Anything else?", False),
        ("Here is a title: The Quiet Joy of Chess. Would you like a few more options?", False),
        ("Happy birthday, Amara! Does this work for you?", False),
        ("Meeting reminder: the team meets on Friday at 10. Let me know if you need changes.", False),
        ("We solve $x ? y$ and `a ? b : c`, giving 2.", False),
        (
            "Dear colleague, "
            + "thank you for everything you did for the team this month. " * 4
            + "What's her name?",
            False,
        ),
        ("", False),
    ],
)
def test_ask_detector_credits_requests_not_question_marks(text, asks):
    assert asks_a_question(text) is asks


# ----------------------------------------------------------------------------------------- must_contain
def _score(metric: str, messages: list[dict], **kwargs) -> float:
    spec = resolve_metrics([metric])[metric]
    return asyncio.run(spec.score(MetricContext(messages=messages, **kwargs)))


def test_must_contain_scores_the_last_answer_case_insensitively():
    extra = {"must_contain": ["Keiko"]}
    opener = {"role": "user", "content": "Write a short thank-you note to my colleague."}
    answer = {"role": "assistant", "content": "Dear KEIKO, thank you for your help. Anything else?"}
    question = {"role": "assistant", "content": "Is your colleague called Keiko?"}
    assert _score("must_contain", [opener, answer], extra_info=extra) == 1.0
    assert (
        _score(
            "must_contain", [opener, {"role": "assistant", "content": "Dear Sam, thanks!"}], extra_info=extra
        )
        == 0.0
    )
    # a question that names the detail is not an answer; the last answer counts, not a later question
    assert _score("must_contain", [opener, question], extra_info=extra) == 0.0
    assert (
        _score(
            "must_contain", [opener, answer, {"role": "user", "content": "ok"}, question], extra_info=extra
        )
        == 1.0
    )
    assert _score("must_contain", [opener], ground_truth=["keiko"]) == 0.0
    with pytest.raises(ValueError, match="must_contain"):
        _score("must_contain", [opener, answer], ground_truth="Keiko")


# ----------------------------------------------------------------------------------------- scripted user
def _user_says(base_url: str, row: dict, history: list[dict]) -> str:
    messages = build_simulator_messages(
        goal=row["single_turn_prompt"],
        task_desc=row["task_desc"],
        history=history,
        termination_signal=TERMINATE,
    )
    response = litellm.completion(
        model=f"openai/{user.NAME}", messages=messages, api_base=base_url, api_key="local", num_retries=0
    )
    return json.loads(response.choices[0].message.content)["response"]


def test_scripted_ambiguity_user_follows_its_rules(llm_server):
    ambiguous = next(r for r in _rows("heldin") if r["ambiguous"])
    clear = next(r for r in _rows("heldin") if not r["ambiguous"])
    detail = ambiguous["must_contain"][0]
    opened = [{"role": "user", "content": ambiguous["opener"]}]
    url = llm_server.base_url
    assert _user_says(url, ambiguous, []) == ambiguous["opener"]
    assert (
        _user_says(url, ambiguous, [*opened, {"role": "assistant", "content": ASK}])
        == ambiguous["clarification"]
    )
    wrong = _user_says(
        url,
        ambiguous,
        [*opened, {"role": "assistant", "content": "Here you go: a fine text. Anything else?"}],
    )
    assert wrong == user.WRONG_REPLY and detail not in wrong  # no detail given away
    right = f"Here you go: a text for {detail.lower()}. Anything else?"
    assert _user_says(url, ambiguous, [*opened, {"role": "assistant", "content": right}]) == TERMINATE
    clear_opened = [{"role": "user", "content": clear["opener"]}]
    assert _user_says(url, clear, [*clear_opened, {"role": "assistant", "content": ASK}]) == user.CLEAR_REPLY
    # an unknown goal is a clear HTTP 400, not a made-up reply
    with pytest.raises(litellm.BadRequestError, match="not a row of any loaded"):
        _user_says(url, {**clear, "single_turn_prompt": "Something no file holds."}, clear_opened)


def test_register_rows_serves_another_file(llm_server, tmp_path):
    row = {
        **_rows("heldout")[1],
        "single_turn_prompt": "Write a limerick about otters.",
        "opener": "Write a limerick.",
        "ambiguous": True,
        "clarification": "Make it about otters.",
        "must_contain": ["otter"],
    }
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert user.register_rows(path) == 1
    history = [{"role": "user", "content": row["opener"]}, {"role": "assistant", "content": ASK}]
    assert _user_says(llm_server.base_url, row, history) == "Make it about otters."


# ----------------------------------------------------------------------------------------- evaluate.py
def _policy(messages: list[dict], request: dict) -> str:
    """A model under test that asks on a request it cannot fulfil and answers with the detail once it has it."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    for row in _rows("heldout"):
        if row["ambiguous"] and users == [row["opener"]]:
            return ASK
        if users[-1] in (row["clarification"], row["single_turn_prompt"]):
            return f"Here it is, with {row['must_contain'][0]}."
    return "I cannot tell."


register_responder("ask-policy", _policy)


def _evaluate_args(llm_server, out, policy: str) -> list[str]:
    """evaluate.py's arguments for 8 held-out rows with the scripted ambiguity user and a scripted ``policy``."""
    return [
        "--dataset", str(SHIPPED["heldout"]), "--out", str(out), "--num_rows", "8",
        "--metrics", "must_contain,asks_question,token_amount", "--policy_model", f"openai/{policy}",
        "--user_model", f"openai/{user.NAME}", "--api_base", llm_server.base_url, "--api_key_env", "ASK_TEST_KEY",
        "--num_retries", "0", "--max_messages", "6", "--bootstrap_resamples", "200",
    ]  # fmt: skip


def test_evaluate_starts_with_the_opener_and_reports_split_ask_rates(llm_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ASK_TEST_KEY", "local")
    out = tmp_path / "eval"
    code = evaluate.main(
        _evaluate_args(llm_server, out, "ask-policy")
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]
    by_goal = {r["single_turn_prompt"]: r for r in _rows("heldout")}
    assert len(records) == 8
    for record in records:
        row = by_goal[record["goal"]]
        assert record["messages"][0]["content"] == row["opener"]  # the first user turn is the row's opener
        assert record["goal"] == row["single_turn_prompt"] and record["ambiguous"] is row["ambiguous"]
        assert record["end_reason"] == "terminated" and record["metrics"]["must_contain"] == 1.0
        assert record["num_messages"] == (5 if row["ambiguous"] else 3)
    summary = json.loads((out / "summary.json").read_text())
    diagnostics = summary["diagnostics"]
    assert diagnostics["ask_rate_ambiguous"] == 1.0 and diagnostics["ask_rate_clear"] == 0.0
    assert diagnostics["goal_leak_rate"] == 0.0 and diagnostics["simulated_user_turns"] > 0


# ----------------------------------------------------------------------------------------- diagnostics
def test_goal_leak_needs_a_long_span_the_opener_did_not_hold():
    goal = "Write a short thank-you note to my colleague Keiko for helping with the quarterly report."
    opener = "Write a short thank-you note to my colleague."
    assert copies_goal(
        "Sure: write a short thank-you note to my colleague Keiko for helping with it", goal, opener
    )
    assert not copies_goal("My colleague's name is Keiko.", goal, opener)
    assert not copies_goal(
        "Write a short thank-you note to my colleague, please.", goal, opener
    )  # in the opener


def test_reward_diagnostics_units():
    assert ask_rates([(True, True), (False, True), (False, False), (True, None)]) == {
        "ask_rate": 0.5,
        "ask_rate_ambiguous": 0.5,
        "ask_rate_clear": 0.0,
    }
    assert ask_rates([(True, None)])["ask_rate_clear"] is None
    assert equal_reward_share({"a": [1.0, 1.0], "b": [0.0, 1.0], "c": [0.5]}) == 0.5
    assert equal_reward_share({"c": [0.5]}) is None
    weights = {"must_contain": 1.0, "token_amount": -0.01, "asks_question": 0.0}
    per = {
        "must_contain": [1.0, 0.0, None],
        "token_amount": [10.0, 10.0, 5.0],
        "asks_question": [1.0, 1.0, 1.0],
    }
    assert score_spread(per, weights) == pytest.approx(0.5)  # futures scores 0.9 and -0.1; the third unscored
    assert score_spread({"must_contain": [1.0]}, weights) is None
    history = [{"role": "user", "content": "Write a short thank-you note to my colleague."}]
    extra = {
        "ambiguous": True,
        "interaction_kwargs": {"single_turn_prompt": "Write a short thank-you note to my colleague Keiko."},
    }
    futures = [
        [
            *history,
            {"role": "assistant", "content": ASK},
            {"role": "user", "content": "My colleague's name is Keiko."},
        ],
        [
            *history,
            {"role": "assistant", "content": ASK},
            {"role": "user", "content": "write a short thank-you note to my colleague Keiko"},
        ],
    ]
    diag = response_diagnostics(futures, 1, extra, per, weights)
    assert diag.asks and diag.ambiguous is True and (diag.leaked_turns, diag.user_turns) == (1, 2)
    # a skipped response (no future conversation) still counts in the ask rate, from its decoded text
    skipped = response_diagnostics([], 1, extra, {}, weights, response=ASK)
    assert skipped.asks and skipped.score_spread is None and skipped.user_turns == 0
    assert response_diagnostics([], 1, extra, {}, weights) is None
    records = [
        {"messages": futures[1], "goal": extra["interaction_kwargs"]["single_turn_prompt"], "ambiguous": True}
    ]
    assert conversation_diagnostics(records)["goal_leak_rate"] == 1.0


def test_step_summary_carries_the_diagnostics():
    from collabllm_verl.recipe.core.multiturn_reward import SampleScore
    from collabllm_verl.recipe.core.reward_diagnostics import ResponseDiagnostics
    from collabllm_verl.recipe.verl_adapters.step_summary import (
        ResponseReport,
        summarize_step,
        training_metrics,
    )

    def report(uid: str, reward: float, asks: bool, ambiguous: bool) -> ResponseReport:
        score = SampleScore(
            reward=reward,
            means={"must_contain": reward},
            weighted={"must_contain": reward},
            failures={"must_contain": 0},
            scored={"must_contain": 3},
            num_conversations=3,
        )
        return ResponseReport(
            step=1,
            uid=uid,
            score=score,
            context={"metric_weights": {"must_contain": 1.0}},
            diagnostics=ResponseDiagnostics(asks, ambiguous, 0.1, 1, 4),
        )

    reports = [
        report("a", 1.0, True, True),
        report("a", 1.0, False, True),
        report("b", 0.0, False, False),
        report("b", 1.0, False, False),
    ]
    summary = summarize_step(1, reports)
    diag = summary["diagnostics"]
    assert diag["equal_reward_groups"] == 0.5 and diag["groups"] == 2
    assert diag["ask_rate_ambiguous"] == 0.5 and diag["ask_rate_clear"] == 0.0
    assert diag["goal_leak_rate"] == 0.25 and diag["score_spread_mean"] == pytest.approx(0.1)
    metrics = training_metrics(summary, reports)
    assert metrics["collabllm/diag/equal_reward_groups"] == 0.5
    assert metrics["collabllm/diag/ask_rate_ambiguous"] == 0.5


# ----------------------------------------------------------------------------------------- results.json
def _guess_policy(messages: list[dict], request: dict) -> str:
    """A model under test that never asks: it answers every request at once, with the detail when it has it."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    row = next((r for r in _rows("heldout") if users[0] == r["single_turn_prompt"]), None)
    return f"Here it is, with {row['must_contain'][0]}." if row else "Here it is: a short text for you."


register_responder("guess-policy", _guess_policy)


def test_ablation_results_pair_the_arms_by_task(llm_server, tmp_path, monkeypatch):
    from collabllm_verl.recipe.evaluation.ask_ablation import MEASURES, ablation_results

    monkeypatch.setenv("ASK_TEST_KEY", "local")
    runs = {}
    for label, policy in (("base", "guess-policy"), ("w2", "ask-policy")):
        runs[label] = tmp_path / label
        assert (
            evaluate.main(
                _evaluate_args(llm_server, runs[label], policy)
            )
            == 0
        )
    results = ablation_results(runs, {"steps": 0}, n_resamples=200)
    assert set(results) == {"arms", "vs_base", "settings", "conversations"} and set(results["vs_base"]) == {"w2"}
    assert results["conversations"]["base"]["expected"] == results["conversations"]["base"]["scored"] == 8
    assert results["conversations"]["w2"]["conversation_failures"] == 0
    for arm in results["arms"].values():
        assert set(arm) == set(MEASURES)
        assert all(set(entry) == {"mean", "low", "high", "n"} for entry in arm.values())
    base, w2, diff = results["arms"]["base"], results["arms"]["w2"], results["vs_base"]["w2"]
    assert base["ask_rate_ambiguous"]["n"] == base["ask_rate_clear"]["n"] == 4 and base["messages"]["n"] == 8
    assert base["ask_rate_ambiguous"]["mean"] == 0.0 and w2["ask_rate_ambiguous"]["mean"] == 1.0
    assert base["success_ambiguous"]["mean"] == 0.0 and w2["success_ambiguous"]["mean"] == 1.0
    assert base["success_clear"]["mean"] == w2["success_clear"]["mean"] == 1.0
    assert diff["ask_rate_ambiguous"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 4}
    # guessing on an ambiguous row: answer, "not what I need", answer ... up to the 6-message limit; asking
    # ends after 5 (question, clarification, answer, end signal); clear rows: 3 messages in both runs
    assert diff["ask_rate_clear"]["mean"] == 0.0 and diff["messages"]["mean"] == pytest.approx(-0.5)
    assert diff["assistant_tokens"]["n"] == 8 and diff["assistant_tokens"]["mean"] is not None


def _dump_record(opener: str, response: str, reward: float, success: float | None, skip: str | None = None):
    return {
        "step": 1, "history": [{"role": "system", "content": "be helpful"}, {"role": "user", "content": opener}],
        "response": response, "reward": reward, "forward_sampling": {"skip_reason": skip},
        "metrics": {"must_contain": {"mean": success}} if success is not None else {},
    }  # fmt: skip


def test_heldin_signal_splits_the_training_reward_by_ambiguity_and_asking(tmp_path):
    """What the reward paid for asking vs answering on held-in rows, from a conversation dump: the flag comes
    from the rows file (matched by opener), asking from the shared detector, skipped responses count in the
    reward mean but not in the success mean."""
    from collabllm_verl.recipe.evaluation.ask_ablation import heldin_signal

    rows = _rows("heldin")
    vague = next(r for r in rows if r["ambiguous"])["opener"]
    clear = next(r for r in rows if not r["ambiguous"])["opener"]
    dump = tmp_path / "conversations"
    dump.mkdir()
    records = [
        _dump_record(vague, "Which name do you have in mind?", 0.9, 1.0),
        _dump_record(vague, "Which city is it?", 0.1, 0.0),
        _dump_record(vague, "Here is a note for you.", -0.1, 0.0),
        _dump_record(vague, "Here is a note that goes on and on", -0.4, None, skip="truncated"),
        _dump_record(clear, "Here it is.", 0.8, 1.0),
    ]
    (dump / "step_000001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    signal = heldin_signal(dump, SHIPPED["heldin"])
    ambiguous = signal["ambiguous"]
    assert ambiguous["asks"] == {"n": 2, "skipped": 0, "reward_mean": pytest.approx(0.5), "success_mean": 0.5}
    assert ambiguous["answers"] == {
        "n": 2, "skipped": 1, "reward_mean": pytest.approx(-0.25), "success_mean": 0.0,
    }  # fmt: skip
    assert ambiguous["advantage"] == pytest.approx(0.75)
    assert signal["clear"]["asks"]["n"] == 0 and signal["clear"]["advantage"] is None
    assert signal["clear"]["answers"]["reward_mean"] == pytest.approx(0.8)

    (dump / "step_000002.jsonl").write_text(json.dumps(_dump_record("Not a row of the family.", "Hi", 0, 0)) + "\n")
    with pytest.raises(ValueError, match="is not a row of"):
        heldin_signal(dump, SHIPPED["heldin"])
    with pytest.raises(FileNotFoundError, match="not a conversation dump"):
        heldin_signal(tmp_path / "empty", SHIPPED["heldin"])
