"""``python -m api``: run the gateway with uvicorn, configured from ``STRUCTQ_*``."""

from __future__ import annotations

import os
import tempfile

import uvicorn

from api.settings import ApiSettings


def main() -> None:
    settings = ApiSettings.load()
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each process keeps its metrics in this (fresh) folder, and a scrape adds them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="structq-metrics-")
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
