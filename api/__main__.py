"""``python -m api``: run the gateway with uvicorn, configured from ``STRUCTQ_*``."""

from __future__ import annotations

import uvicorn

from api.settings import ApiSettings


def main() -> None:
    settings = ApiSettings.load()
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
