"""The chaos soak's short run (``make chaos`` runs it for 10 minutes): 3 minutes of mixed load
on two workers of a stack of its own under seeded faults at the production timing defaults,
then the checker (docs/lifecycle.md, "The chaos soak") finds nothing lost, stuck, duplicated or
failed without cause."""

from __future__ import annotations

import pytest

from scripts.chaos import Soak

pytestmark = pytest.mark.e2e

MINUTES = 3
SEED = 24


def test_three_minutes_of_mixed_faults_break_no_guarantee(tmp_path_factory) -> None:
    soak = Soak(tmp_path_factory.mktemp("chaos"), SEED, MINUTES)
    try:
        ok = soak.run()
    finally:
        soak.stop()
    assert len(soak.faults) >= 6, soak.faults
    assert ok, soak.table
