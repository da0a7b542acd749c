"""Prices, projection and budgets (issue 22): the price math of the LLM-call layer over real HTTP to the local
server, the budget check and the projection text, the task runner's budget stop and resume, the training
cost guard (forced checkpoint, then the error), the price flags and the LLM_PRICES shortcut."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from collabllm_verl.recipe.cli.model_args import parse_prices
from collabllm_verl.recipe.core.cost import (
    BudgetExceeded,
    check_budget,
    projection_text,
    role_of,
    spend_by_role,
)
from collabllm_verl.recipe.core.run_store import RunStore
from collabllm_verl.recipe.core.task_runner import TaskRunner, TaskRunnerSettings

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ price math
async def test_prices_replace_the_price_map_in_every_cost_figure(llm_server):
    from collabllm_verl.recipe.core.llm_client import LLMSettings, acomplete_text, llm_stats, usage_scope

    priced = LLMSettings.from_config(
        {
            "model": "openai/echo",
            "api_base": llm_server.base_url,
            "api_key": "local",
            "input_cost_per_token": 2e-6,
            "output_cost_per_token": 8e-6,
        }
    )
    before = llm_stats().get("cost_test/cost_usd", 0.0)
    with usage_scope() as usage:
        await acomplete_text([{"role": "user", "content": "one two three four"}], priced, purpose="cost_test")
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = usage.prompt_tokens * 2e-6 + usage.completion_tokens * 8e-6
    assert usage.cost_usd == pytest.approx(expected, rel=1e-9)
    assert usage.cost_unknown == 0
    assert llm_stats()["cost_test/cost_usd"] - before == pytest.approx(expected, rel=1e-9)

    unpriced = LLMSettings.from_config(
        {"model": "openai/echo", "api_base": llm_server.base_url, "api_key": "local"}
    )
    with usage_scope() as usage:
        await acomplete_text([{"role": "user", "content": "hello"}], unpriced, purpose="cost_test")
    assert usage.cost_usd == 0 and usage.cost_unknown == 1


def test_prices_come_in_pairs_and_reach_the_layer_from_role_settings():
    from collabllm_verl.recipe.core.llm_client import LLMSettings, token_cost_usd
    from collabllm_verl.recipe.core.settings import JudgeSettings

    with pytest.raises(ValueError, match="set together"):
        LLMSettings(model="m", input_cost_per_token=1e-6)
    judge = JudgeSettings.from_mapping(
        {"input_cost_per_token": 1e-6, "output_cost_per_token": 3e-6}, where="j"
    )
    llm = judge.to_llm(where="j")
    assert token_cost_usd(llm, 1000, 500) == pytest.approx(1000 * 1e-6 + 500 * 3e-6)
    assert token_cost_usd(LLMSettings(model="m"), 1000, 500) is None


# ------------------------------------------------------------------------------------------ budget, projection
def test_spend_by_role_splits_purposes():
    stats = {
        "cost_usd": 9.0,
        "user_simulator/cost_usd": 1.0,
        "judge:accuracy/cost_usd": 0.5,
        "judge:interactivity/cost_usd": 0.25,
        "policy/cost_usd": 2.0,
        "policy/cost_unknown": 3.0,
    }
    assert spend_by_role(stats) == {"simulator": 1.0, "judges": 0.75, "other": 2.0, "unpriced": 3.0}
    assert role_of("judge:bleu_score") == "judges" and role_of("assistant") == "other"


def test_budget_check_names_the_budget_and_the_spend():
    check_budget({"simulator": 1.0, "judges": 0.5}, 2.0, what="run", key="max_cost_usd", then="x")
    check_budget({"simulator": 100.0}, None, what="run", key="max_cost_usd", then="x")
    with pytest.raises(BudgetExceeded) as err:
        check_budget(
            {"simulator": 1.5, "judges": 0.75, "unpriced": 9},
            2.0,
            what="training run",
            key="max_cost_usd",
            then="resume",
        )
    assert err.value.spent_usd == pytest.approx(2.25) and err.value.budget_usd == 2.0
    text = str(err.value)
    assert "spent $2.25" in text and "simulator $1.5" in text and "judges $0.75" in text
    assert "max_cost_usd=2 USD" in text and text.endswith("resume")


def test_projection_text_per_unit_total_and_budget():
    text = projection_text({"simulator": 0.4, "judges": 0.1}, done=1, total=10, unit="step")
    assert "cost after 1 of 10 steps: $0.5 per step (simulator $0.4, judges $0.1)" in text
    assert "projected $5 for 10 steps (simulator $4, judges $1)" in text
    over = projection_text({"simulator": 0.8, "judges": 0.2}, done=2, total=10, unit="step", budget_usd=3.0)
    assert "projected $5 for 10 steps" in over and "projected to stop after about 6 steps" in over
    within = projection_text({"simulator": 0.1}, done=1, total=4, unit="task", budget_usd=1.0)
    assert "within the budget max_cost_usd=1 USD" in within
    unpriced = projection_text({"unpriced": 12.0}, done=3, total=3, unit="task")
    assert "$0 per task" in unpriced and "12 requests had no price" in unpriced
    with pytest.raises(ValueError):
        projection_text({}, done=0, total=3, unit="step")


class Meter:
    """A spend source: each task of the work below costs ``usd`` of simulator and judges together."""

    def __init__(self) -> None:
        self.simulator = 0.0
        self.judges = 0.0

    def __call__(self) -> dict[str, float]:
        return {"simulator": self.simulator, "judges": self.judges, "other": 0.0, "unpriced": 0.0}


async def test_task_runner_stops_at_the_budget_and_a_rerun_continues(tmp_path, capsys):
    meter, calls = Meter(), []

    async def work(task, attempt):
        calls.append(task)
        meter.simulator += 0.75
        meter.judges += 0.25
        return {"value": task}

    tasks = [f"t{i}" for i in range(10)]
    store = RunStore(tmp_path / "records.jsonl")
    settings = TaskRunnerSettings(max_concurrent=1, retries=0, max_cost_usd=2.5, progress=False, unit="task")
    with pytest.raises(BudgetExceeded) as err:
        await TaskRunner(settings, store=store, key=str, spend=meter).run(tasks, work)
    assert calls == ["t0", "t1", "t2"]  # $3 spent after the third: stopped there
    assert "spent $3 (simulator $2.25, judges $0.75)" in str(err.value) and "--max_cost_usd=2.5 USD" in str(
        err.value
    )
    assert err.value.summary.finished == 3
    assert [r["key"] for r in RunStore(store.path).records()] == ["t0", "t1", "t2"]

    calls.clear()
    more = settings.model_copy(update={"max_cost_usd": 100.0})
    summary = await TaskRunner(more, store=RunStore(store.path), key=str, spend=meter).run(tasks, work)
    assert calls == tasks[3:] and summary.resumed == 3 and summary.finished == 7
    stderr = capsys.readouterr().err
    assert (
        "cost after 5 of 7 tasks: $1 per task (simulator $0.75, judges $0.25); projected $7 for 7 tasks"
        in stderr
    )


# ------------------------------------------------------------------------------------------ training guard
class FakeTrainer:
    def __init__(self, callback) -> None:
        from omegaconf import OmegaConf

        self.config = OmegaConf.create({"trainer": {"save_freq": 100}})
        OmegaConf.set_struct(self.config, True)
        self.checkpoint_callback = callback
        self.total_training_steps = 20


def test_cost_guard_projects_forces_a_checkpoint_then_stops(capsys):
    from collabllm_verl.recipe.verl_adapters.cost_guard import (
        BudgetCheckpointCallback,
        CostGuard,
        spend_from_totals,
    )

    callback = BudgetCheckpointCallback(config=None)
    trainer = FakeTrainer(callback)
    guard = CostGuard(1.0, trainer)
    totals = {"simulator_cost_usd": 0.3, "judge_cost_usd": 0.1}
    line = guard.after_step(1, spend_from_totals(totals))
    assert line.startswith(
        "[collabllm cost] cost after 1 of 20 steps: $0.4 per step (simulator $0.3, judges $0.1)"
    )
    assert "projected $8 for 20 steps" in capsys.readouterr().out
    callback.on_save(trainer, 1, "/ckpt/global_step_1")  # nothing pending: no error
    assert trainer.config.trainer.save_freq == 100
    assert guard.after_step(2, spend_from_totals({"simulator_cost_usd": 0.9, "judge_cost_usd": 0.3})) is None
    assert trainer.config.trainer.save_freq == 1  # verl saves step 2 after its update
    with pytest.raises(BudgetExceeded) as err:
        callback.on_save(trainer, 2, "/ckpt/global_step_2")
    text = str(err.value)
    assert "training run (step 2) stopped: spent $1.2 (simulator $0.9, judges $0.3)" in text
    assert "trainer.v1.sampler.sampler_kwargs.max_cost_usd=1 USD" in text and "/ckpt/global_step_2" in text
    callback.on_save(trainer, 3, "/ckpt/global_step_3")  # the stop was raised once


def test_cost_guard_without_the_callback_stops_at_once():
    from collabllm_verl.recipe.verl_adapters.cost_guard import CostGuard

    with pytest.raises(BudgetExceeded, match="No checkpoint was forced"):
        CostGuard(0.5, None).after_step(1, {"simulator": 1.0})
    with pytest.raises(ValueError, match="max_cost_usd must be a number > 0"):
        CostGuard("lots")


# ------------------------------------------------------------------------------------------ flags, shortcuts
def test_price_flags_and_shortcut_are_usd_per_million():
    assert parse_prices("0.15,0.6", flag="--llm_prices") == pytest.approx((0.15e-6, 0.6e-6))
    assert parse_prices(None, flag="--llm_prices") == (None, None)
    with pytest.raises(ValueError, match="--judge_prices expects IN,OUT"):
        parse_prices("0.15", flag="--judge_prices")
    script = (
        f"source {ROOT}/scripts/common.sh; ARGS=(); price_shortcut LLM_PRICES ++a ++b; "
        'printf "%s\\n" "${ARGS[@]}"'
    )
    out = subprocess.run(
        ["bash", "-c", script],
        env={"LLM_PRICES": "0.15,0.6", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [
        "++a.input_cost_per_token=1.5e-07",
        "++a.output_cost_per_token=6e-07",
        "++b.input_cost_per_token=1.5e-07",
        "++b.output_cost_per_token=6e-07",
    ]
    bad = subprocess.run(
        ["bash", "-c", script],
        env={"LLM_PRICES": "cheap", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "LLM_PRICES expects <in>,<out>" in bad.stderr


def test_evaluate_stops_at_its_budget_and_a_rerun_continues(
    llm_server, tmp_path, monkeypatch, capsys, caplog
):
    import json

    import evaluate

    monkeypatch.setenv("COST_TEST_KEY", "local")
    tasks = tmp_path / "tasks.jsonl"
    rows = [
        {"problem": f"Compute {a} + 1 and box it.", "solution": f"\\boxed{{{a + 1}}}", "answer": str(a + 1)}
        for a in range(4)
    ]
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "run"
    argv = [
        "--dataset",
        str(tasks),
        "--out",
        str(out),
        "--task",
        "math",
        "--policy_model",
        "openai/echo",
        "--user_model",
        "openai/scripted-user",
        "--judge_model",
        "openai/scripted-judge",
        "--api_base",
        llm_server.base_url,
        "--api_key_env",
        "COST_TEST_KEY",
        "--num_retries",
        "0",
        "--bootstrap_resamples",
        "200",
        "--concurrency",
        "1",
        "--llm_prices",
        "1000,1000",
    ]
    assert evaluate.main([*argv, "--max_cost_usd", "0.001"]) == 1
    text = capsys.readouterr().err + caplog.text
    assert "this run of 4 conversations stopped: spent $" in text and "--max_cost_usd=0.001 USD" in text
    assert "1 of this run's conversations are finished and kept" in text
    first = (out / "conversations.jsonl").read_text().splitlines()
    assert len(first) == 1
    caplog.clear()
    assert evaluate.main([*argv, "--max_cost_usd", "1000"]) == 0
    text = capsys.readouterr().err + caplog.text
    assert "[conversations] cost after 3 of 3 conversations: $" in text  # the 3 left, the first one kept
    records = (out / "conversations.jsonl").read_text().splitlines()
    assert records[0] == first[0] and len(records) == 4
