"""``pass_rate``: an LLM extracts the final code; BigCodeBench's sandboxed runner executes the task's tests.

Needs BigCodeBench's runner: the optional ``code`` extra (``numpy``, ``matplotlib``: what the runner imports)
plus ``pip install --no-deps bigcodebench==0.2.5`` (its declared dependencies are not needed). The code and the
task's ``unittest`` tests run through ``bigcodebench.eval.untrusted_check``: a separate process with
BigCodeBench's reliability guard (memory and stack limits, destructive OS calls disabled, kill/exec
intercepted, temporary working directory, time limit), started in a fresh process session that is
killed afterwards (see :mod:`.bigcodebench_sandbox`). The value is 1.0 when every test passes
(BigCodeBench's pass criterion), else 0.0; averaged over the forward-sampled conversations it is the
pass rate.

The task's tests are looked up in this order: ``ground_truth`` if it is a mapping with ``test``;
``extra_info["single_turn_metadata"]``; ``extra_info["metadata"]["single_turn_metadata"]`` (the dataset
converter stores other source columns as a JSON string in ``metadata``); ``extra_info["metadata"]``;
``extra_info`` itself. The mapping must hold ``test`` (the unittest source defining ``TestCases``) and
``entry_point`` (the function name).

The extraction judge gets the task text (``interaction_kwargs.single_turn_prompt``, else the task's
``instruct_prompt`` / ``complete_prompt``), the entry point and the conversation, and is asked for one
runnable program whose main function is named after the entry point, without tests and without a
``__main__`` block (as the original recipe; docs/design.md §1): a correct solution that the assistant
named differently still passes. When the task has a ``code_prompt`` (BigCodeBench's imports and signature;
``--adaptor bigcodebench`` keeps it in the metadata) the judge also gets it and is asked to start from it, as
the authors' TRL code does.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .bigcodebench_sandbox import run_in_session
from .judge import ask_judge
from .registry import MetricContext, MetricError, register_metric

# The originals' limits (both pass 300 x 1024 MiB as the address-space, data and stack limits), in MiB;
# BigCodeBench's own defaults (30 GiB, 30 GiB, 10 MiB stack) make a deeply recursive correct solution,
# e.g. json.dumps of a deeply nested object, crash or time out (docs/fidelity.md 4.3). Time limit in seconds.
ORIGINAL_LIMIT_MB = 300 * 1024
DEFAULT_LIMITS = {
    "max_as_limit_mb": ORIGINAL_LIMIT_MB,
    "max_data_limit_mb": ORIGINAL_LIMIT_MB,
    "max_stack_limit_mb": ORIGINAL_LIMIT_MB,
}
DEFAULT_TIMEOUT_S = 240.0

_runner: ThreadPoolExecutor | None = None
_runner_lock = threading.Lock()


class BigCodeBenchNotInstalled(ImportError):
    """``pass_rate`` was used without the optional ``bigcodebench`` package."""


def require_bigcodebench():
    """Import and return ``bigcodebench.eval``.

    Raises:
        BigCodeBenchNotInstalled: with the install command.
    """
    try:
        import bigcodebench.eval as bcb_eval
    except ImportError as exc:
        raise BigCodeBenchNotInstalled(
            "the pass_rate metric needs BigCodeBench's test runner: "
            "pip install 'collabllm-verl[code]' && pip install --no-deps bigcodebench==0.2.5 "
            f"(the extra installs what the runner imports; bigcodebench's own dependencies are not needed) ({exc})"
        ) from exc
    return bcb_eval


def _as_mapping(value: Any) -> Mapping | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, Mapping) else None
    return None


def find_task(ground_truth: Any, extra_info: Mapping[str, Any]) -> Mapping[str, Any]:
    """The BigCodeBench task fields (``test``, ``entry_point``, ...) of a row; see the module docstring.

    Raises:
        ValueError: no candidate mapping holds both ``test`` and ``entry_point``.
    """
    extra_info = extra_info or {}
    metadata = _as_mapping(extra_info.get("metadata")) or {}
    candidates = [
        _as_mapping(ground_truth),
        _as_mapping(extra_info.get("single_turn_metadata")),
        _as_mapping(metadata.get("single_turn_metadata")),
        metadata,
        extra_info,
    ]
    for candidate in candidates:
        if candidate and isinstance(candidate.get("test"), str) and candidate.get("entry_point"):
            return candidate
    raise ValueError(
        "pass_rate needs the task's unit tests: a mapping with 'test' and 'entry_point' in "
        "reward_model.ground_truth, extra_info.single_turn_metadata, extra_info.metadata"
        "(.single_turn_metadata) or extra_info"
    )


def run_unit_tests(
    code: str,
    test_code: str,
    entry_point: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_as_limit_mb: int = DEFAULT_LIMITS["max_as_limit_mb"],
    max_data_limit_mb: int = DEFAULT_LIMITS["max_data_limit_mb"],
    max_stack_limit_mb: int = DEFAULT_LIMITS["max_stack_limit_mb"],
) -> tuple[str, dict[str, str]]:
    """Run ``code`` + ``test_code`` in BigCodeBench's sandbox; blocking (seconds), call from a thread.

    The check runs in a fresh process session that is killed afterwards
    (:mod:`collabllm_verl.metrics.bigcodebench_sandbox`), so hanging code leaves no process behind.

    Returns:
        ``(status, details)``: status is ``"pass"``, ``"fail"`` or ``"timeout"``; details maps failing
        test names (or ``"ALL"``) to their error text.

    Raises:
        BigCodeBenchNotInstalled: bigcodebench is missing.
        RuntimeError: the runner process crashed.
    """
    require_bigcodebench()
    return run_in_session(
        code,
        test_code,
        entry_point,
        timeout_s=float(timeout_s),
        max_as_limit_mb=int(max_as_limit_mb),
        max_data_limit_mb=int(max_data_limit_mb),
        max_stack_limit_mb=int(max_stack_limit_mb),
    )


def _runner_pool() -> ThreadPoolExecutor:
    """Threads that wait on sandbox processes (``COLLABLLM_PASS_RATE_WORKERS``, default: CPU count)."""
    global _runner
    with _runner_lock:
        if _runner is None:
            workers = int(os.environ.get("COLLABLLM_PASS_RATE_WORKERS", os.cpu_count() or 1))
            _runner = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="pass_rate")
        return _runner


def _strip_fences(code: str) -> str:
    """Drop one surrounding Markdown code fence, if the judge added one despite the instructions."""
    text = code.strip()
    if text.startswith("```"):
        first_newline = text.find("\n")
        text = text[first_newline + 1 :] if first_newline != -1 else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text


def _check_options(options: Mapping[str, Any]) -> None:
    """Start-up check: bigcodebench importable, numeric limits positive."""
    require_bigcodebench()
    for key, value in options.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"pass_rate option {key}={value!r} is not a number") from None
        if number <= 0:
            raise ValueError(f"pass_rate option {key}={value!r} must be > 0")


@register_metric(
    "pass_rate",
    value_range=(0.0, 1.0),
    unit="0/1 per conversation (all unit tests pass)",
    description="LLM extracts the final code; BigCodeBench's sandboxed runner executes the task's tests",
    needs_judge=True,
    options={
        "timeout_s": f"seconds for one test run (default {DEFAULT_TIMEOUT_S:g}, BigCodeBench's limit)",
        "max_as_limit_mb": "address-space limit of the test process in MiB (default 307200, as the originals)",
        "max_data_limit_mb": "data-segment limit of the test process in MiB (default 307200, as the originals)",
        "max_stack_limit_mb": "stack limit of the test process in MiB (default 307200, as the originals; "
        "BigCodeBench's own default is 10)",
    },
    validate=_check_options,
)
async def pass_rate(ctx: MetricContext) -> float:
    """1.0 when the extracted final code passes all of the task's unit tests, else 0.0.

    Raises:
        BigCodeBenchNotInstalled: the optional extra is missing (raised before any judge call).
        ValueError: the row does not carry the task's tests (see :func:`find_task`).
        MetricError: the extraction judge failed (``judge_failure=True``), or the sandbox itself crashed.
    """
    require_bigcodebench()
    task = find_task(ctx.ground_truth, ctx.extra_info)
    task_text = ctx.single_turn_prompt or str(
        task.get("instruct_prompt") or task.get("complete_prompt") or ""
    )
    answer = await ask_judge(
        "extract_code",
        "pass_rate",
        ctx,
        sections={
            "task": task_text or "(not given)",
            "entry_point": str(task["entry_point"]),
            "code_prompt": str(task.get("code_prompt") or ""),  # the start the code must keep (TRL's rule)
        },
    )
    code = _strip_fences(answer["final_code"])
    if not code:
        return 0.0
    merged = {**DEFAULT_LIMITS, "timeout_s": DEFAULT_TIMEOUT_S, **dict(ctx.options)}
    # setrlimit needs integers; the time limit may be fractional.
    options = {key: (float(value) if key == "timeout_s" else int(value)) for key, value in merged.items()}
    try:
        status, _details = await asyncio.get_running_loop().run_in_executor(
            _runner_pool(),
            lambda: run_unit_tests(code, task["test"], str(task["entry_point"]), **options),
        )
    except (OSError, RuntimeError, ValueError) as exc:  # runner start-up or crash, unreadable result
        raise MetricError("pass_rate", f"BigCodeBench sandbox error: {type(exc).__name__}: {exc}") from None
    return 1.0 if status == "pass" else 0.0
