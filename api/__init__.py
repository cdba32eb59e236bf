"""The gateway: a FastAPI app that validates jobs, stores and enqueues them, and serves results."""
