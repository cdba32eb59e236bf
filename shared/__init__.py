"""What the gateway and the worker both use: wire models, output types, settings, Redis keys."""
