"""The gateway's image installs the `api`, `webhooks` and `s3` extras and nothing else
(api/Dockerfile): in a fresh virtualenv holding only those, every gateway module, every
shared module and the webhook worker import. A module imported but not declared by an extra
fails here (the development environment has more: vLLM pulls `fastapi[standard]`, which once
hid the gateway's missing `python-multipart`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = "api,webhooks,s3"
# What the gateway's image runs: `python -m api`, and `python -m worker.webhooks` (compose).
PROBE = """
import importlib, pkgutil, sys
import api, shared
names = [m.name for p in (api, shared) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]
names += ["api.__main__", "worker.webhooks", "worker.__main__"]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in ("vllm", "torch", "transformers") if m in sys.modules)
assert not heavy, heavy
print(len(names))
"""


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with structq[api,webhooks,s3] installed from a copy of the sources the
    Dockerfile copies (so no module of the checkout's other folders is found by accident)."""
    root = tmp_path_factory.mktemp("image")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("shared", "api", "worker", "scripts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src}[{EXTRAS}]"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    shutil.rmtree(src)  # the installed copy is what runs
    return venv


def test_the_gateway_images_extras_import_every_module_it_runs(image_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["STRUCTQ_WEBHOOK_SECRET"] = "whsec_" + "A" * 44
    out = subprocess.run(
        [str(image_env / "bin" / "python"), "-c", PROBE],
        capture_output=True,
        text=True,
        cwd=image_env,  # not the checkout: the installed package only
        env=env,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert int(out.stdout) > 40, out.stdout
