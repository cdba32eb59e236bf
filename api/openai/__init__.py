"""The OpenAI-compatible facade: requests into jobs, jobs into answers."""
