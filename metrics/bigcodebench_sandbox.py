"""Run one BigCodeBench test in its own process session, then clean up everything it left behind.

``bigcodebench.eval.untrusted_check`` (0.2.5) forks a test process that starts a
``multiprocessing.Manager`` server; when the test hangs and the runner kills the test process, that
server is orphaned and lives on (one leaked process per timed-out test, e.g. for generated code with an
infinite loop). Here each check runs in a fresh Python process started in a new session
(``python -m collabllm_verl.metrics.bigcodebench_sandbox``); when it returns, its whole process group
is killed, orphans included. This module registers no metric; ``pass_rate`` uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile

__all__ = ["run_in_session"]

# Seconds granted beyond the test's own limit for process start-up, imports and the runner's joins.
_GRACE_S = 30.0


def run_in_session(
    code: str,
    test_code: str,
    entry_point: str,
    *,
    timeout_s: float,
    max_as_limit_mb: int,
    max_data_limit_mb: int,
    max_stack_limit_mb: int,
) -> tuple[str, dict[str, str]]:
    """Blocking: run ``untrusted_check`` in a new session; returns ``(status, details)``.

    ``status`` is ``"pass"``, ``"fail"`` or ``"timeout"`` (BigCodeBench's statuses); ``details`` maps
    failing test names (or ``"ALL"``) to their error text.

    Raises:
        RuntimeError: the runner process crashed or printed no result (its stderr tail is included).
    """
    request = {
        "code": code,
        "test_code": test_code,
        "entry_point": entry_point,
        "timeout_s": float(timeout_s),
        "limits_mb": [int(max_as_limit_mb), int(max_data_limit_mb), int(max_stack_limit_mb)],
    }
    with tempfile.TemporaryDirectory(prefix="collabllm-bcb-") as workdir:
        request_path = os.path.join(workdir, "request.json")
        result_path = os.path.join(workdir, "result.json")
        with open(request_path, "w") as fh:
            json.dump(request, fh)
        # Files, not pipes: an orphan holding a pipe open would delay end-of-file until it is killed.
        with open(os.path.join(workdir, "stderr.txt"), "w+") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, request_path, result_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=float(timeout_s) + _GRACE_S)
            except subprocess.TimeoutExpired:
                return "timeout", {"ALL": f"runner exceeded {timeout_s + _GRACE_S:.0f} s"}
            finally:
                # the session's process group: the runner and anything it orphaned
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if os.path.exists(result_path):
                with open(result_path) as fh:
                    result = json.load(fh)
                return result["status"], result["details"]
            stderr.seek(0)
            tail = stderr.read().strip().splitlines()[-3:]
    raise RuntimeError(
        f"BigCodeBench runner exited with code {proc.returncode} and no result: {' | '.join(tail)}"
    )


def _main(request_path: str, result_path: str) -> None:
    """Runner entry point: read the request JSON file, write the result JSON file."""
    with open(request_path) as fh:
        request = json.load(fh)
    import bigcodebench.eval as bcb_eval

    timeout_s = request["timeout_s"]
    # untrusted_check's limit is max(TIMEOUT_LIMIT, gt_time_limit) + 1 s and its environment override
    # is read as a string (a TypeError in 0.2.5); this process is private, so set the constant.
    bcb_eval.TIMEOUT_LIMIT = timeout_s
    status, details = bcb_eval.untrusted_check(
        request["code"],
        request["test_code"],
        request["entry_point"],
        *request["limits_mb"],
        min_time_limit=timeout_s,
        gt_time_limit=timeout_s,
    )
    details = {str(k): str(v) for k, v in dict(details).items()}
    with open(result_path + ".tmp", "w") as fh:
        json.dump({"status": status, "details": details}, fh)
    os.replace(result_path + ".tmp", result_path)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
