"""``make bench``: structq against raw vLLM on the same workloads, side by side, in one run."""
