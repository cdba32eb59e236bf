"""Gateway settings (``STRUCTQ_*`` variables; see the README's settings table)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings

__all__ = ["ApiSettings"]


class ApiSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")
    workers: int = Field(1, ge=1, description="Gateway worker processes (uvicorn --workers).")
    redis_max_connections: int = Field(
        64,
        ge=2,
        description="Redis connections per gateway process; requests beyond that wait for one "
        "(a burst never fails for lack of connections).",
    )
    extra_models: list[str] = Field(
        default_factory=list,
        description="More served model names the gateway accepts beside STRUCTQ_MODEL "
        "(JSON list), each routed to its own queue.",
    )

    @property
    def models(self) -> list[str]:
        return [self.model, *self.extra_models]
