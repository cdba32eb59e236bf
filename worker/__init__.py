"""The worker: a Celery app whose process holds one resident vLLM engine and runs jobs on it."""
