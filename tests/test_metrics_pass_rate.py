"""``pass_rate`` with real BigCodeBench tasks (data/bigcodebench) and BigCodeBench's own sandboxed runner.

The final code is extracted by the scripted judge (offline stand-in, over HTTP through litellm) from
the conversation's last fenced code block; the tests then run in ``bigcodebench.eval.untrusted_check``.
Skipped only when the optional ``code`` extra (bigcodebench) is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("bigcodebench.eval", reason="pass_rate needs the optional 'code' extra (bigcodebench)")

from collabllm_verl.metrics import MetricContext, MetricError, get_metric
from collabllm_verl.metrics.pass_rate import find_task
from collabllm_verl.recipe.core.llm_client import LLMSettings

TASKS_FILE = Path(__file__).resolve().parents[1] / "data" / "bigcodebench" / "bigcodebench_tasks.jsonl"
TASKS = {row["task_id"]: row for row in map(json.loads, TASKS_FILE.read_text().splitlines())}
# Standard-library tasks whose tests run in well under a second.
FAST_TASKS = ("BigCodeBench/19", "BigCodeBench/147", "BigCodeBench/720")


def coding_conversation(task: dict, final_code: str | None) -> list[dict]:
    final = (
        "Here is the final version:\n\n```python\n" + final_code + "\n```"
        if final_code
        else "Which OS are you on?"
    )
    return [
        {"role": "user", "content": task["instruct_prompt"][:200]},
        {
            "role": "assistant",
            "content": "A first draft:\n```python\nprint('draft')\n```\nDoes this look right?",
        },
        {"role": "user", "content": "Please follow the full specification."},
        {"role": "assistant", "content": final},
    ]


def ctx(task: dict, code: str | None, judge: LLMSettings, *, where: str = "single_turn_metadata", **options):
    fields = {"task_id": task["task_id"], "test": task["test"], "entry_point": task["entry_point"]}
    if where == "single_turn_metadata":
        extra_info = {"single_turn_metadata": fields}
    else:  # as the dataset converter stores other source columns: a JSON string
        extra_info = {"metadata": json.dumps({"single_turn_metadata": fields})}
    return MetricContext(
        messages=coding_conversation(task, code),
        num_history_messages=1,
        ground_truth=task["canonical_solution"],
        extra_info=extra_info,
        judge=judge,
        options=options,
    )


def broken(task: dict) -> str:
    """The task's signature with a body that returns nothing useful."""
    return task["code_prompt"] + "    return None\n"


async def test_canonical_solutions_pass_and_broken_ones_fail(judge, llm_server):
    spec = get_metric("pass_rate")
    contexts = []
    for i, task_id in enumerate(FAST_TASKS):
        task = TASKS[task_id]
        where = "single_turn_metadata" if i % 2 == 0 else "metadata"
        contexts.append(ctx(task, task["code_prompt"] + task["canonical_solution"], judge, where=where))
        contexts.append(ctx(task, broken(task), judge, where=where))
    scores = await asyncio.gather(*(spec.score(c) for c in contexts))
    assert scores == [1.0, 0.0] * len(FAST_TASKS)
    assert llm_server.stats()["model:scripted-judge"] == len(contexts)  # one extraction call each


async def test_a_correct_solution_under_another_name_passes(judge, llm_server):
    """The extraction judge gets the task text and the entry point and names the main function after it, with
    no ``__main__`` block (as the original recipe): the assistant's own function name no longer fails the tests."""
    task = TASKS[FAST_TASKS[0]]
    entry = task["entry_point"]
    solution = (task["code_prompt"] + task["canonical_solution"]).replace(f"def {entry}(", "def solve(")
    solution += '\n\nif __name__ == "__main__":\n    print(solve())\n'
    assert f"def {entry}(" not in solution
    context = ctx(task, solution, judge)
    goal = task["instruct_prompt"]
    context = dataclasses.replace(
        context, extra_info={**context.extra_info, "interaction_kwargs": {"single_turn_prompt": goal}}
    )
    assert await get_metric("pass_rate").score(context) == 1.0
    system, user = llm_server.received[-1]["messages"]
    assert f"<task>\n{goal}\n</task>\n\n<entry_point>\n{entry}\n</entry_point>" in user["content"]
    assert "entry point" in system["content"] and "__main__" in system["content"]


# A correct solution whose work recurses deeply in C: json.dumps of a list nested NESTING levels deep needs far
# more than a 10 MiB stack (measured: passes at depth 50000, crashes at 200000 under 10 MiB).
NESTING = 200_000
DEEP_TASK = {
    "task_id": "collabllm-verl/deep-recursion",
    "instruct_prompt": "Return the length of the JSON text of a list nested `depth` levels deep around 0.",
    "entry_point": "task_func",
    "code_prompt": "import json\nimport sys\n\ndef task_func(depth):\n",
    "canonical_solution": (
        "    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * depth + 1000))\n"
        "    value = 0\n"
        "    for _ in range(depth):\n"
        "        value = [value]\n"
        "    return len(json.dumps(value))\n"
    ),
    "test": (
        "import unittest\n\n"
        "class TestCases(unittest.TestCase):\n"
        "    def test_deep(self):\n"
        f"        self.assertEqual(task_func({NESTING}), {2 * NESTING + 1})\n"
    ),
}


async def test_deeply_recursive_correct_solution_passes_with_the_originals_stack_limit(judge, llm_server):
    """fidelity.md 4.3: the originals pass 300 x 1024 MiB as the stack limit too; under BigCodeBench's own
    10 MiB stack the same correct solution fails."""
    spec = get_metric("pass_rate")
    solution = DEEP_TASK["code_prompt"] + DEEP_TASK["canonical_solution"]
    assert await spec.score(ctx(DEEP_TASK, solution, judge)) == 1.0
    assert await spec.score(ctx(DEEP_TASK, solution, judge, max_stack_limit_mb=10, timeout_s=5)) == 0.0


async def test_no_code_scores_zero_without_running_tests(judge):
    task = TASKS[FAST_TASKS[0]]
    c = ctx(task, None, judge)
    c.messages[1]["content"] = "Could you tell me more?"  # no code anywhere
    assert await get_metric("pass_rate").score(c) == 0.0


def _processes_in_session_of(pid_file: Path) -> list[str]:
    """Live processes whose session id is the pid recorded in ``pid_file`` (Linux /proc)."""
    sid = pid_file.read_text().strip()
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[3] == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            alive.append(f"{stat.parent.name} state={fields[0]} ppid={fields[1]} pgrp={fields[2]}")
    return alive


async def test_time_limit_option_and_no_leftover_processes(judge, tmp_path):
    """Hanging code is stopped at timeout_s; BigCodeBench's runner would orphan a process here
    (its Manager server), which the session clean-up must kill."""
    task = TASKS[FAST_TASKS[0]]
    pid_file = tmp_path / "sid"
    looping = (
        task["code_prompt"]
        + f"    open({str(pid_file)!r}, 'w').write(str(__import__('os').getsid(0)))\n"
        + "    while True:\n        pass\n"
    )
    assert await get_metric("pass_rate").score(ctx(task, looping, judge, timeout_s=1)) == 0.0
    assert pid_file.exists()
    # SIGKILL has been sent to the whole session; give the kernel a moment to finish the kills
    deadline = time.monotonic() + 5.0
    while _processes_in_session_of(pid_file) and time.monotonic() < deadline:  # noqa: ASYNC110  (polls the OS)
        await asyncio.sleep(0.05)
    assert _processes_in_session_of(pid_file) == []


async def test_judge_failure_is_reported(judge, llm_server):
    task = TASKS[FAST_TASKS[0]]
    llm_server.inject("malformed_json", "malformed_json")  # first attempt and its one retry
    with pytest.raises(MetricError) as err:
        await get_metric("pass_rate").score(
            ctx(task, task["code_prompt"] + task["canonical_solution"], judge)
        )
    assert err.value.judge_failure


def test_task_lookup_errors_name_the_fields():
    with pytest.raises(ValueError, match="entry_point"):
        find_task("def f(): pass", {"metadata": json.dumps({"other": 1})})
    assert find_task({"test": "t", "entry_point": "f"}, {})["entry_point"] == "f"
