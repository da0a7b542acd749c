"""evaluate.py end to end against the local server: a scripted model under test, the scripted user and the
scripted judges, all through litellm over HTTP. Checks the protocol (the simulator opens, termination,
message limits, system prompt), the summary numbers against hand-computed values, the intervals, resume,
failure reporting, compare, processed parquet input and that API keys never reach outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate
from collabllm_verl.recipe.dataset.system_prompt import COLLABORATOR_SYSTEM_PROMPT
from collabllm_verl.recipe.evaluation.statistics import bootstrap_interval
from collabllm_verl.recipe.offline.server import register_responder

QUESTION = "Could you share the whole problem, please?"
OPENER_PREFIX = "hi, I need some help with this:"  # the scripted user's vague opener
TERMINATION = "[[TERMINATE CHAT]]"
KEY_ENV = "EVAL_TEST_API_KEY"
SECRET = "sk-evaltest-0123456789abcdef"
POLICY_FAIL_MARKER = "[[policy:fail]]"
_FAILING = {"on": True}


def _answering_policy(answer: str):
    """A model under test that asks one clarifying question after the vague opener, then answers."""

    def respond(messages: list[dict], request: dict) -> str:
        last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
        if last_user.startswith(OPENER_PREFIX):
            return QUESTION
        if POLICY_FAIL_MARKER in last_user and _FAILING["on"]:
            raise ValueError("scripted failure of the model under test")  # HTTP 400: not retried
        return f"The result is \\boxed{{{answer}}}."

    return respond


register_responder("eval-policy", _answering_policy("4"))
register_responder("eval-policy-five", _answering_policy("5"))
register_responder("eval-asker", lambda messages, request: QUESTION)


def _task(a: int, b: int, suffix: str = "") -> dict:
    problem = f"Compute {a} + {b} and give the result in a box, with one short sentence of explanation.{suffix}"
    return {"problem": problem, "solution": f"{a} + {b} = \\boxed{{{a + b}}}", "answer": str(a + b)}


def _write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    return path


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    """Four math tasks; the policy's fixed answer 4 is right for three of them (sums 4, 5, 4, 4)."""
    return _write_tasks(tmp_path / "math_tasks.jsonl", [_task(2, 2), _task(3, 2), _task(1, 3), _task(0, 4)])


@pytest.fixture
def run_cli(llm_server, monkeypatch, capsys, caplog):
    """Run ``evaluate.main`` with the local server's models; returns (exit code, stdout + stderr + log)."""
    monkeypatch.setenv(KEY_ENV, SECRET)

    def run(dataset: Path, out: Path, *extra: str, policy: str = "eval-policy", task: str | None = "math"):
        argv = [
            "--dataset", str(dataset), "--out", str(out), *(["--task", task] if task else []),
            "--policy_model", policy if "/" in policy else f"openai/{policy}", "--user_model", "openai/scripted-user",
            "--judge_model", "openai/scripted-judge", "--api_base", llm_server.base_url,
            "--api_key_env", KEY_ENV, "--num_retries", "0", "--bootstrap_resamples", "2000", *extra,
        ]
        caplog.clear()
        code = evaluate.main(argv)
        captured = capsys.readouterr()
        return code, captured.out + captured.err + caplog.text

    return run


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _cl100k_tokens(text: str) -> int:
    import tiktoken
    from litellm.litellm_core_utils import default_encoding  # noqa: F401  (tiktoken reads litellm's bundled file)

    return len(tiktoken.get_encoding("cl100k_base").encode(text))


def test_protocol_simulator_opens_policy_answers_termination_ends(run_cli, tasks_file, tmp_path, llm_server):
    code, _ = run_cli(tasks_file, tmp_path / "run", "--num_rows", "1")
    assert code == 0
    (record,) = _records(tmp_path / "run")
    messages = record["messages"]
    # the chat starts empty: the simulator writes a vague first turn, not the hidden goal
    assert messages[0]["role"] == "user" and messages[0]["content"].startswith(OPENER_PREFIX)
    assert record["goal"] not in messages[0]["content"]
    assert [m["role"] for m in messages[:4]] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == QUESTION and "\\boxed{4}" in messages[3]["content"]
    # the simulator ended the chat: its terminating message is kept as the last user turn (judges and
    # token_amount see it, as in the originals), the policy answered twice and nothing follows
    assert record["end_reason"] == "terminated" and record["assistant_turns"] == 2
    assert len(messages) == 5
    assert messages[4]["role"] == "user" and TERMINATION in messages[4]["content"]
    # the model under test got the project's system prompt, then the opener
    policy_requests = [r for r in llm_server.received if r["model"].endswith("eval-policy")]
    assert policy_requests[0]["messages"][0] == {"role": "system", "content": COLLABORATOR_SYSTEM_PROMPT}
    assert policy_requests[0]["messages"][1]["content"] == messages[0]["content"]
    assert policy_requests[0]["temperature"] == 0.6  # the math preset's temperature


def test_message_limit_and_no_system_prompt(run_cli, tasks_file, tmp_path, llm_server):
    """A policy that only asks questions runs into --max_messages; --system_prompt none sends none. The
    policy is reached as a vLLM server is (litellm's hosted_vllm provider, its own --policy_api_base)."""
    out = tmp_path / "run"
    code, _ = run_cli(tasks_file, out, "--num_rows", "2", "--max_messages", "4", "--system_prompt", "none",
                      "--policy_api_base", llm_server.base_url, policy="hosted_vllm/eval-asker")
    assert code == 0
    for record in _records(out):
        assert record["num_messages"] == 4 and record["end_reason"] == "turn_limit"
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"] * 2
    assert all(r["messages"][0]["role"] == "user" for r in llm_server.received if r["model"].endswith("eval-asker"))
    assert _summary(out)["conversations"]["messages_histogram"] == {"4": 2}
    code, output = run_cli(tasks_file, tmp_path / "odd", "--max_messages", "5")
    assert code == 2 and "even" in output


def test_summary_numbers_match_hand_computed_values(run_cli, tasks_file, tmp_path):
    out = tmp_path / "run"
    code, output = run_cli(tasks_file, out, "--samples_per_row", "2", "--seed", "11")
    assert code == 0
    summary = _summary(out)
    metrics = summary["metrics"]
    # accuracy: the fixed answer 4 is right on 3 of 4 tasks, on both samples of each
    assert metrics["accuracy"]["mean"] == pytest.approx(0.75)
    accuracy = metrics["accuracy"]
    assert (accuracy["n_tasks"], accuracy["n_scored"], accuracy["failures"]) == (4, 8, 0)
    # the interval is the bootstrap of the per-task values in task-id order, whatever order they finished in
    by_task = {r["task_id"]: r["metrics"]["accuracy"] for r in _records(out)}
    assert sorted(by_task.values()) == [0.0, 1.0, 1.0, 1.0]
    expected_interval = bootstrap_interval([by_task[t] for t in sorted(by_task)], n_resamples=2000, seed=11)
    assert (metrics["accuracy"]["ci_low"], metrics["accuracy"]["ci_high"]) == pytest.approx(expected_interval)
    assert metrics["accuracy"]["ci_low"] <= 0.75 <= metrics["accuracy"]["ci_high"]
    assert metrics["accuracy"]["pass_hat"] == {"1": pytest.approx(0.75), "2": pytest.approx(0.75)}
    # interactivity (scripted judge): understood 1, asked a question 1, no suggestion 0 -> 2/3 everywhere
    assert metrics["interactivity"]["mean"] == pytest.approx(2 / 3)
    assert (metrics["interactivity"]["ci_low"], metrics["interactivity"]["ci_high"]) == pytest.approx((2 / 3, 2 / 3))
    # token_amount: thousands of cl100k tokens of the two assistant messages
    tokens = _cl100k_tokens(QUESTION) + _cl100k_tokens("The result is \\boxed{4}.")
    assert metrics["token_amount"]["mean"] == pytest.approx(tokens / 1000)
    assert metrics["token_amount"]["unit"] == "thousands of cl100k_base tokens of assistant messages"
    conversations = summary["conversations"]
    assert conversations["scored"] == conversations["expected"] == 8
    assert conversations["assistant_turns_mean"] == 2
    assert conversations["end_reasons"] == {"terminated": 8}
    assert summary["settings"]["samples_per_row"] == 2 and summary["data"]["num_tasks"] == 4
    assert summary["versions"]["scipy"] != "not installed"
    # usage per role, counted per conversation
    usage = summary["usage"]["by_role"]
    assert usage["policy"]["requests"] == 16 and usage["judge"]["requests"] == 16  # 2 judge metrics x 8
    assert usage["user_simulator"]["requests"] >= 8 * 2
    # paper-shaped table and figure
    table = (out / "summary.md").read_text()
    assert "| Accuracy (%) ↑ | ITR (%) ↑ | # Tokens (k) ↓ |" in table
    assert f"| 75.0 [{100 * expected_interval[0]:.1f}, {100 * expected_interval[1]:.1f}] | 66.7 [66.7, 66.7] |" in table
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy: 0.75" in output


def test_failures_are_counted_and_left_out_of_the_means(run_cli, tmp_path, monkeypatch):
    """A judge that answers prose for one conversation, and a model under test that fails on another."""
    monkeypatch.setitem(_FAILING, "on", True)
    tasks = _write_tasks(
        tmp_path / "tasks.jsonl",
        [_task(2, 2), _task(3, 2), _task(1, 3, " [[judge:malformed]]"), _task(0, 4, f" {POLICY_FAIL_MARKER}")],
    )
    out = tmp_path / "run"
    code, output = run_cli(tasks, out)
    assert code == 0
    by_goal = {r["goal"]: r for r in _records(out)}
    judged_badly = next(r for g, r in by_goal.items() if "judge:malformed" in g)
    assert judged_badly["status"] == "scored"
    assert judged_badly["metrics"]["accuracy"] is None and judged_badly["metrics"]["interactivity"] is None
    assert judged_badly["metrics"]["token_amount"] is not None
    assert sorted(judged_badly["metric_failures"]) == ["accuracy", "interactivity"]
    failed = next(r for g, r in by_goal.items() if POLICY_FAIL_MARKER in g)
    assert failed["status"] == "conversation_failed" and failed["end_reason"] == "policy_failure"
    assert "scripted failure" in failed["error"]
    assert all(v is None for v in failed["metrics"].values())
    metrics = _summary(out)["metrics"]
    # accuracy over the two cleanly scored tasks (1 and 0): 0.5, not 1/3 or 1/4 as zeros would give
    assert metrics["accuracy"]["mean"] == pytest.approx(0.5)
    assert (metrics["accuracy"]["n_scored"], metrics["accuracy"]["failures"]) == (2, 1)
    assert (metrics["token_amount"]["n_scored"], metrics["token_amount"]["failures"]) == (3, 0)
    conversations = _summary(out)["conversations"]
    assert conversations["conversation_failures"] == 1 and conversations["end_reasons"]["policy_failure"] == 1
    assert "1 unfinished" in output
    assert "1 could not be finished" in (out / "summary.md").read_text()


def test_resume_skips_finished_conversations_and_retries_failed_ones(run_cli, tmp_path, llm_server, monkeypatch):
    monkeypatch.setitem(_FAILING, "on", True)
    tasks = _write_tasks(tmp_path / "tasks.jsonl", [_task(2, 2), _task(3, 2), _task(0, 4, f" {POLICY_FAIL_MARKER}")])
    out = tmp_path / "run"
    assert run_cli(tasks, out)[0] == 0
    assert _summary(out)["conversations"]["conversation_failures"] == 1

    # the model under test recovers; a killed run left half a line behind
    monkeypatch.setitem(_FAILING, "on", False)
    with open(out / "conversations.jsonl", "a") as fh:
        fh.write('{"key": "partial')
    before = llm_server.stats().get("model:eval-policy", 0)
    assert run_cli(tasks, out)[0] == 0
    summary = _summary(out)
    assert summary["invocation"]["skipped"] == 2 and summary["invocation"]["conversations_run"] == 1
    assert llm_server.stats()["model:eval-policy"] - before == 2  # one conversation: two policy turns
    assert summary["conversations"]["scored"] == 3 and summary["conversations"]["conversation_failures"] == 0
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(2 / 3)
    records = _records(out)
    assert len({r["key"] for r in records}) == 3  # the retried conversation replaced the failed one

    # a finished run: nothing to do; more samples per task extend it
    assert run_cli(tasks, out)[0] == 0
    assert _summary(out)["invocation"]["conversations_run"] == 0
    assert run_cli(tasks, out, "--samples_per_row", "2")[0] == 0
    assert _summary(out)["invocation"] == {**_summary(out)["invocation"], "skipped": 3, "conversations_run": 3}

    # other settings are refused rather than mixed into the same records
    code, output = run_cli(tasks, out, "--max_messages", "6")
    assert code == 2 and "other settings" in output and "max_messages" in output
    assert run_cli(tasks, out, "--max_messages", "6", "--overwrite")[0] == 0
    assert _summary(out)["invocation"]["skipped"] == 0


def test_compare_reports_paired_differences(run_cli, tasks_file, tmp_path, capsys):
    base, trained = tmp_path / "base", tmp_path / "trained"
    assert run_cli(tasks_file, base, "--label", "base")[0] == 0
    assert run_cli(tasks_file, trained, "--label", "trained", policy="eval-policy-five")[0] == 0
    out = tmp_path / "cmp"
    assert evaluate.main(["compare", str(base), str(trained), "--out", str(out), "--bootstrap_resamples", "2000"]) == 0
    result = json.loads((out / "compare.json").read_text())
    accuracy = result["metrics"]["accuracy"]
    # base is right on sums 4, 4, 4 (tasks 1, 3, 4); the other model only on sum 5 (task 2)
    assert (accuracy["mean_a"], accuracy["mean_b"], accuracy["mean_diff"]) == pytest.approx((0.75, 0.25, -0.5))
    assert (accuracy["wins"], accuracy["ties"], accuracy["losses"], accuracy["n_tasks"]) == (1, 0, 3, 4)
    assert accuracy["ci_low"] <= -0.5 <= accuracy["ci_high"]
    assert result["metrics"]["interactivity"]["mean_diff"] == pytest.approx(0.0)
    assert result["differing_settings"] == {}
    table = (out / "compare.md").read_text()
    assert "# trained vs base" in table and "| Accuracy (%) ↑ | 75.0 | 25.0 | -50.0 |" in table
    assert (out / "compare.png").stat().st_size > 0
    capsys.readouterr()
    # the flag form, default output folder
    assert evaluate.main(["--compare", str(base), str(trained), "--bootstrap_resamples", "2000"]) == 0
    assert (trained / "compare_vs_base" / "compare.json").is_file()
    assert evaluate.main(["compare", str(base), str(tmp_path / "missing")]) == 2
    # a run under another protocol: compared, with a caution naming what else differs
    other = tmp_path / "other"
    assert run_cli(tasks_file, other, "--max_messages", "6")[0] == 0
    assert evaluate.main(["compare", str(base), str(other), "--out", str(tmp_path / "cmp2")]) == 0
    result = json.loads((tmp_path / "cmp2" / "compare.json").read_text())
    assert result["differing_settings"] == {"max_messages": {"a": 14, "b": 6}}
    assert "**Caution**" in (tmp_path / "cmp2" / "compare.md").read_text()
    assert result["metrics"]["accuracy"]["mean_diff"] == pytest.approx(0.0)


def test_processed_validation_parquet_gives_its_hidden_goals(run_cli, tasks_file, tmp_path):
    import pandas as pd

    import process_dataset

    processed = tmp_path / "processed"
    assert process_dataset.main(
        ["--dataset", str(tasks_file), "--local_dir", str(processed), "--dataset_type", "rl", "--validation_size", "2"]
    ) == 0
    parquet = processed / "rl_validation.parquet"
    goals = {row["interaction_kwargs"]["single_turn_prompt"] for row in pd.read_parquet(parquet)["extra_info"]}
    out = tmp_path / "run"
    assert run_cli(parquet, out)[0] == 0
    summary = _summary(out)
    assert summary["data"]["kind"] == "processed_rl_parquet" and summary["data"]["num_tasks"] == len(goals) == 2
    assert {r["goal"] for r in _records(out)} == goals
    assert summary["metrics"]["accuracy"]["n_scored"] == 2


def test_bad_input_and_secrets(run_cli, tasks_file, tmp_path):
    bad = _write_tasks(tmp_path / "bad.jsonl", [_task(2, 2), {"problem": "no solution here"}])
    code, output = run_cli(bad, tmp_path / "bad_run")
    assert code == 2 and "bad.jsonl: row 1: field 'solution': missing" in output
    code, output = run_cli(tasks_file, tmp_path / "both", "--policy_checkpoint", str(tmp_path))
    assert code == 2 and "exactly one of --policy_model" in output
    # the API key (read from KEY_ENV) appears in no output, log or file
    out = tmp_path / "run"
    code, output = run_cli(tasks_file, out, "--num_rows", "1")
    assert code == 0 and SECRET not in output
    for path in out.iterdir():
        if path.suffix in {".json", ".jsonl", ".md"}:
            assert SECRET not in path.read_text()
    assert _summary(out)["settings"]["key_env_vars"]["policy"] == KEY_ENV


def test_multiturn_source_gives_one_task_per_goal_and_the_document_preset(run_cli, tmp_path, llm_server):
    """The bundled CollabLLM medium row: its dataset name picks the document preset (bleu_score on the
    extracted document) and the 0.8 temperature of the original document evaluation."""
    source = Path(__file__).resolve().parents[1] / "data" / "collabllm" / "collabllm_multiturn_medium_large_rows.jsonl"
    out = tmp_path / "run"
    code, _ = run_cli(source, out, task=None)
    assert code == 0
    summary = _summary(out)
    assert summary["settings"]["task_preset"] == "document" and summary["data"]["num_tasks"] == 1
    assert list(summary["metrics"]) == ["bleu_score", "interactivity", "token_amount"]
    assert summary["metrics"]["bleu_score"]["n_scored"] == 1  # the judge extracted a document, BLEU scored it
    (record,) = _records(out)
    assert record["goal"] == json.loads(source.read_text().splitlines()[0])["single_turn_prompt"]
    assert next(r["temperature"] for r in llm_server.received if r["model"].endswith("eval-policy")) == 0.8


def test_flags_are_generated_from_the_settings_fields():
    """One home per default: every evaluation flag's default and help come from EvaluationSettings."""
    from collabllm_verl.recipe.evaluation.settings import EvaluationSettings

    parser = evaluate.build_parser()
    actions = {action.dest: action for action in parser._actions}
    resolved = {"source", "user", "judge", "policy"}  # built from the source and model flags
    for name, field in EvaluationSettings.model_fields.items():
        if name in resolved:
            continue
        action = actions[name]
        assert " ".join(field.description.split()).replace("%", "%%") in action.help, name
        if not field.is_required():
            assert action.default == field.get_default(call_default_factory=True), name
    assert actions["progress"].option_strings == ["--no_progress"]
    args = parser.parse_args(["--dataset", "d.jsonl", "--out", "o", "--policy_model", "m", "--no_progress"])
    settings = evaluate.settings_from_args(args)
    assert settings.progress is False and settings.max_messages == 14 and settings.policy.model == "m"
    bad = parser.parse_args(["--dataset", "d.jsonl", "--out", "o", "--policy_model", "m", "--concurrency", "0"])
    with pytest.raises(ValueError, match="--concurrency: Input should be greater than or equal to 1"):
        evaluate.settings_from_args(bad)


def test_unfinished_conversations_spend_the_failure_budget_and_are_retried(run_cli, tmp_path, llm_server, monkeypatch):
    monkeypatch.setitem(_FAILING, "on", True)
    tasks = _write_tasks(
        tmp_path / "tasks.jsonl",
        [_task(2, 2), *(_task(i, 1, f" {POLICY_FAIL_MARKER}") for i in range(3))],
    )
    out = tmp_path / "run"
    before = llm_server.stats().get("model:eval-policy", 0)
    code, output = run_cli(tasks, out, "--concurrency", "1", "--failure_budget", "0.5", "--task_retries", "1")
    # the third unfinished conversation of four exceeds the budget (more than 2): the run stops, exit 1
    assert code == 1 and "stopped: 3 of the 4 conversations of this run failed" in output
    assert "failure budget of 50%" in output and not (out / "summary.json").exists()
    # each failing conversation was tried twice (task_retries 1): opener reply + failing reply, per attempt
    assert llm_server.stats()["model:eval-policy"] - before == 2 + 3 * 2 * 2
    records = _records(out)
    assert sorted(r["status"] for r in records) == ["conversation_failed"] * 3 + ["scored"]
    # the model recovers: the same command resumes, runs only the unfinished ones and writes the summary
    monkeypatch.setitem(_FAILING, "on", False)
    code, _ = run_cli(tasks, out, "--concurrency", "1", "--failure_budget", "0.5", "--task_retries", "1")
    assert code == 0
    summary = _summary(out)
    assert summary["invocation"]["skipped"] == 1 and summary["invocation"]["conversations_run"] == 3
    assert summary["conversations"]["scored"] == 4


# ------------------------------------------------------------------------------ evaluation protocols


def test_paper_protocol_sets_its_defaults_and_flags_override_them():
    """--protocol paper: 1024-token replies, gpt-4o user, Claude 3.5 Sonnet judge; the recipe protocol keeps
    2048 and gpt-4o-mini; explicit flags win over either."""
    from collabllm_verl.recipe.evaluation.settings import PROTOCOLS

    parser = evaluate.build_parser()
    base = ["--dataset", "d.jsonl", "--out", "o", "--policy_model", "m"]
    recipe = evaluate.settings_from_args(parser.parse_args(base))
    assert (recipe.protocol, recipe.max_tokens, recipe.user.model, recipe.judge.model) == (
        "recipe", 2048, "gpt-4o-mini", "gpt-4o-mini"
    )
    paper = evaluate.settings_from_args(parser.parse_args([*base, "--protocol", "paper"]))
    assert (paper.max_tokens, paper.user.model, paper.judge.model) == (
        1024, "gpt-4o", "anthropic/claude-3-5-sonnet-20240620"
    )
    assert paper.protocol_definition == PROTOCOLS["paper"]
    assert paper.protocol_definition.metric_options()["interactivity"] == {"rubric": "coarse"}
    overridden = evaluate.settings_from_args(
        parser.parse_args([*base, "--protocol", "paper", "--max_tokens", "300", "--judge_model", "openai/j"])
    )
    assert (overridden.max_tokens, overridden.user.model, overridden.judge.model) == (300, "gpt-4o", "openai/j")
    help_text = parser.format_help()
    for name, protocol in PROTOCOLS.items():  # the help states each protocol's defaults as defined
        assert f"{name} {protocol.max_tokens}" in " ".join(help_text.split())
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--protocol", "neither"])


def test_paper_protocol_run_records_the_protocol_and_scores_the_coarse_rubric(
    run_cli, tasks_file, tmp_path, llm_server
):
    """The same conversations under both protocols: the policy asks one question then answers, with no
    suggestion, so the four-anchor rubric gives (1 + 1 + 0) / 3 and the coarse one 0.5; the reply cap reaches
    the model under test's requests; summary.json and summary.md name the protocol."""
    recipe_out, paper_out = tmp_path / "recipe", tmp_path / "paper"
    assert run_cli(tasks_file, recipe_out, "--num_rows", "2")[0] == 0
    recipe_requests = [r for r in llm_server.received if r["model"].endswith("eval-policy")]
    assert {r["max_tokens"] for r in llm_server.received if r["model"].endswith("scripted-user")} == {512}
    llm_server.reset()
    assert run_cli(tasks_file, paper_out, "--num_rows", "2", "--protocol", "paper")[0] == 0
    paper_requests = [r for r in llm_server.received if r["model"].endswith("eval-policy")]
    assert {r["max_tokens"] for r in recipe_requests} == {2048}
    assert {r["max_tokens"] for r in paper_requests} == {1024}
    simulator = [r for r in llm_server.received if r["model"].endswith("scripted-user")]
    assert simulator and {r["max_tokens"] for r in simulator} == {1024}  # the TRL simulator's cap (recipe: 512)
    judge_prompts = [r["messages"][0]["content"] for r in llm_server.received if r["model"].endswith("scripted-judge")]
    assert any('"interactivity"' in p for p in judge_prompts)
    assert not any('"understanding"' in p for p in judge_prompts)  # the four-anchor prompt is not used
    recipe_summary, paper_summary = _summary(recipe_out), _summary(paper_out)
    assert recipe_summary["metrics"]["interactivity"]["mean"] == pytest.approx(2 / 3)
    assert paper_summary["metrics"]["interactivity"]["mean"] == pytest.approx(0.5)
    assert paper_summary["metrics"]["interactivity"]["options"] == {"rubric": "coarse"}
    assert paper_summary["metrics"]["token_amount"]["options"]["tokenizer"] == "cl100k_base"
    assert paper_summary["protocol"]["name"] == "paper" and paper_summary["protocol"]["max_tokens"] == 1024
    assert recipe_summary["protocol"]["name"] == "recipe"
    assert paper_summary["settings"]["protocol"] == "paper"
    assert paper_summary["settings"]["sampling"]["max_tokens"] == 1024
    assert "Protocol: **paper**" in (paper_out / "summary.md").read_text()
    recipe_md = (recipe_out / "summary.md").read_text()
    assert "Protocol: **recipe**" in recipe_md and "not the paper's quantities" in recipe_md
    # the protocol is part of the run's identity: resuming a folder under the other protocol is refused
    code, output = run_cli(tasks_file, recipe_out, "--num_rows", "2", "--protocol", "paper")
    assert code == 2 and "protocol: 'recipe' -> 'paper'" in output


def test_compare_refuses_mixed_protocols_unless_allowed(run_cli, tasks_file, tmp_path, caplog):
    recipe_out, paper_out = tmp_path / "recipe", tmp_path / "paper"
    assert run_cli(tasks_file, recipe_out, "--num_rows", "2")[0] == 0
    assert run_cli(tasks_file, paper_out, "--num_rows", "2", "--protocol", "paper")[0] == 0
    caplog.clear()
    out = tmp_path / "cmp"
    assert evaluate.main(["compare", str(recipe_out), str(paper_out), "--out", str(out)]) == 2
    assert "protocol 'recipe'" in caplog.text and "'paper'" in caplog.text and "--allow_mixed_protocols" in caplog.text
    assert not (out / "compare.json").exists()
    caplog.clear()
    args = ["compare", str(recipe_out), str(paper_out), "--out", str(out), "--allow_mixed_protocols"]
    assert evaluate.main([*args, "--bootstrap_resamples", "2000"]) == 0
    assert "MIXED PROTOCOLS" in caplog.text
    result = json.loads((out / "compare.json").read_text())
    assert result["protocols"] == {"a": "recipe", "b": "paper", "mixed": True}
    assert "WARNING: mixed protocols" in (out / "compare.md").read_text()
    # the interactivity difference is the rubric's, not the model's: the same policy talked in both runs
    assert result["metrics"]["interactivity"]["mean_diff"] == pytest.approx(0.5 - 2 / 3)


def test_interactivity_rubric_option_is_checked_at_start_up():
    from collabllm_verl.recipe.core.multiturn_reward import resolve_metric_specs

    assert resolve_metric_specs(["interactivity"], {"interactivity": {"rubric": "coarse"}})
    with pytest.raises(ValueError, match="rubric='fine'"):
        resolve_metric_specs(["interactivity"], {"interactivity": {"rubric": "fine"}})


def test_adaptor_source_gives_evaluation_tasks(run_cli, tmp_path):
    """--adaptor math_hard on the lighteval-format fixture: one task per test problem, its solution the
    reference, the math preset chosen from the adaptor's ability."""
    fixture = Path(__file__).resolve().parent / "fixtures" / "math_hard"
    out = tmp_path / "run"
    code, _ = run_cli(fixture, out, "--adaptor", "math_hard", "--split", "test", task=None)
    assert code == 0
    problems = [json.loads(line)["problem"] for line in (fixture / "test.jsonl").read_text().splitlines()]
    records = _records(out)
    assert sorted(r["goal"] for r in records) == sorted(problems)
    summary = _summary(out)
    assert summary["settings"]["task_preset"] == "math" and set(summary["metrics"]) == {
        "accuracy", "interactivity", "token_amount"
    }
