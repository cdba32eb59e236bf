"""``python -m api``: run the gateway with uvicorn, configured from ``STRUCTQ_*``."""

from __future__ import annotations

import os
import tempfile

import uvicorn

from api.settings import ApiSettings
from shared import logs


def main() -> None:
    settings = ApiSettings.load()
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each process keeps its metrics in this (fresh) folder, and a scrape adds them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="structq-metrics-")
    # One config for this process and each of uvicorn's: uvicorn's loggers go through it too.
    log_config = logs.setup(settings.log_format, settings.log_level)
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
