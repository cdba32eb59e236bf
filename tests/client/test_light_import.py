"""``import structq`` stays light: no engine, no web framework, no queue, none of the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = {"vllm", "torch", "fastapi", "celery", "redis", "api", "worker", "shared", "outlines"}

SCRIPT = f"""
import sys
import structq
from structq import AsyncClient, Client, verify_webhook
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
assert not heavy, heavy
"""


def test_import_structq_is_light():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_the_brief_check():
    check = (
        "import structq, sys; assert not any(m.split('.')[0] in "
        "{'vllm','torch','fastapi','celery','redis'} for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60, cwd=ROOT)
