"""structq's Python client: ``Client`` / ``AsyncClient`` for a structq gateway's job API.

Light on purpose: httpx and pydantic (tqdm for ``map``'s progress bar), nothing of the service.
Configured by arguments, or ``STRUCTQ_URL`` and ``STRUCTQ_API_KEY``. See docs/client.md.
"""

from structq._base import VERSION as __version__
from structq._core import MapItem
from structq.aio import AsyncClient, AsyncJob
from structq.client import Client, Job, JobPage
from structq.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NotFound,
    OutputValidationError,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    StreamReset,
    StructqError,
    WebhookVerificationError,
)
from structq.models import BatchEvent, JobEvent, JobRecord, JobStatus, WebhookEvent
from structq.output import OutputSpec, output_spec
from structq.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "BatchEvent",
    "Client",
    "ConflictError",
    "InvalidRequest",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobPage",
    "JobRecord",
    "JobStatus",
    "JobTimeout",
    "MapItem",
    "NotFound",
    "OutputSpec",
    "OutputValidationError",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "StreamReset",
    "StructqError",
    "WebhookEvent",
    "WebhookVerificationError",
    "__version__",
    "output_spec",
    "verify_webhook",
]
