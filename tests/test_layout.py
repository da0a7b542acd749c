"""The layering rule of docs/architecture.md: the simulation-and-scoring core never imports verl.

Evaluation and data generation run the core outside any verl process, so a verl import sneaking into it
would make them pay verl's (and torch's) start-up and tie them to verl's version.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys

import pytest

# Every module under these packages is core (or a stand-in the core may use) and must not import verl ...
ROOT_PACKAGES = ("collabllm_verl.recipe", "collabllm_verl.metrics", "collabllm_verl.interactions")
# ... except those of the packages that face verl by design: its adapters, the CPU backend, the test harness,
VERL_FACING_PACKAGES = (
    "collabllm_verl.recipe.verl_adapters",
    "collabllm_verl.recipe.cpu",
    "collabllm_verl.recipe.testing",
)
# ... among which these are verl-free all the same (docs/architecture.md: "core").
VERL_FREE_IN_VERL_FACING = ("collabllm_verl.recipe.verl_adapters.step_summary",)


def _walk(package: str, folders: list[str]) -> list[str]:
    """The package and its modules, recursively, found on disk (nothing is imported); verl-facing packages
    are left out."""
    if package in VERL_FACING_PACKAGES:
        return []
    found = [package]
    for folder in folders:
        for info in pkgutil.iter_modules([folder]):
            name = f"{package}.{info.name}"
            found += _walk(name, [os.path.join(folder, info.name)]) if info.ispkg else [name]
    return found


def core_modules() -> list[str]:
    """Every module that must not import verl (:data:`ROOT_PACKAGES` minus :data:`VERL_FACING_PACKAGES`,
    plus :data:`VERL_FREE_IN_VERL_FACING`)."""
    modules = []
    for root in ROOT_PACKAGES:
        spec = importlib.util.find_spec(root)
        assert spec is not None and spec.submodule_search_locations, root
        modules += _walk(root, list(spec.submodule_search_locations))
    return sorted({*modules, *VERL_FREE_IN_VERL_FACING})


# One interpreter forks a fresh child per module, so that each module is checked on its own (a module
# that verl reaches through another one is still seen). For speed the parent first loads the third-party
# modules that the modules under test load (found by a first child that imports them all), never a
# module of this project nor verl: so every verl module a child reports was loaded by that child's import.
_PROBE = """
import importlib, json, os, sys

def is_verl(name):
    return name == "verl" or name.startswith("verl.")

def in_child(work):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            report = work()
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "the child died"}')

modules = sys.argv[1:]
before = set(sys.modules)

def third_party_of_all():
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException:
            pass
    return {"third_party": [m for m in sys.modules if m not in before and not m.startswith("collabllm_verl")
                            and not is_verl(m) and m != "__main__"]}

for name in in_child(third_party_of_all).get("third_party", []):
    try:
        importlib.import_module(name)
    except BaseException:
        pass
loaded = sorted(m for m in sys.modules if is_verl(m) or m.startswith("collabllm_verl"))
assert loaded == [], f"the probe itself loaded {loaded[:3]}"

def import_one(module):
    importlib.import_module(module)
    return {"verl": sorted(m for m in sys.modules if is_verl(m))}

print(json.dumps({module: in_child(lambda: import_one(module)) for module in modules}))
"""


def probe(modules: list[str]) -> dict[str, dict]:
    """Import each module in a fresh (forked) interpreter; module -> ``{"verl": [...]}`` (the verl modules
    its import loaded) or ``{"error": "..."}``."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


CORE_MODULES = core_modules()
# A module that does import verl, probed first with the core modules to show that the check can fail.
ADAPTER = "collabllm_verl.recipe.verl_adapters.reward_manager"


@pytest.fixture(scope="module")
def core_probe() -> dict[str, dict]:
    return probe([ADAPTER, *CORE_MODULES])


def test_the_walk_finds_the_core_and_leaves_out_verl_facing_packages():
    assert len(CORE_MODULES) > 40
    for expected in (
        "collabllm_verl.recipe.core.forward_sampling",
        "collabllm_verl.recipe.dataset.io",
        "collabllm_verl.recipe.evaluation.pipeline",
        "collabllm_verl.metrics",
        "collabllm_verl.interactions.collabllm_interaction",
        "collabllm_verl.recipe.verl_adapters.step_summary",
    ):
        assert expected in CORE_MODULES
    assert not [m for m in CORE_MODULES if m.startswith(VERL_FACING_PACKAGES) and m not in VERL_FREE_IN_VERL_FACING]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_not_import_verl(core_probe, module):
    result = core_probe[module]
    assert "error" not in result, f"{module} failed to import: {result.get('error')}"
    assert result["verl"] == [], f"{module} imports verl (directly or through {result['verl'][:3]})"


def test_probe_detects_a_verl_import(core_probe):
    """The check above can fail: the verl adapter module does import verl; the core modules probed after it
    are still seen on their own (each module gets a fresh interpreter)."""
    assert "verl" in core_probe[ADAPTER]["verl"]
    assert core_probe[CORE_MODULES[0]] == {"verl": []}


def test_no_file_cites_notes_outside_the_repository():
    """The project's docs stand alone: docs/design.md is the reference, nothing points outside the repo."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    skip = {".git", ".venv", ".venv-ci", "outputs", "__pycache__", "node_modules"}
    offenders = []
    for path in root.rglob("*"):
        if not path.is_file() or skip & set(path.relative_to(root).parts) or path.suffix in {".pyc", ".parquet"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "DESIGN" + ".md" in text or "FIDELITY" + ".md" in text or "../" + "shared/" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_every_test_named_in_fidelity_md_exists():
    """docs/fidelity.md names, per row, the test that checks it: each named test must exist in tests/."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", (root / "docs" / "fidelity.md").read_text()))
    named -= {"test_freq"}  # verl's trainer key (row 8.14), not a test
    defined = set()
    for path in (root / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_[a-z0-9_]+)\(", path.read_text(), re.M))
    assert len(named) > 30
    assert sorted(named - defined) == []
