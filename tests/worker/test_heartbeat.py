"""The worker's announcement of its adapters (real Redis, no engine): recorded for the gateway
with every beat, and those its pool no longer declares taken out when a worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from shared.keys import ADAPTERS
from shared.records import AdapterRecord
from shared.workers import live_workers_sync
from worker.heartbeat import Heartbeat
from worker.settings import WorkerSettings


def _adapter(folder: Path) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return folder


def test_a_worker_announces_its_adapters_and_forgets_its_pools_dropped_ones(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    stale = AdapterRecord(parent="SmolLM2-135M-Instruct", root="/old", seen=1.0)
    other_pool = AdapterRecord(parent="another-model", root="/theirs", seen=1.0)
    redis_client.hset(ADAPTERS, "dropped", stale.model_dump_json())
    redis_client.hset(ADAPTERS, "theirs", other_pool.model_dump_json())
    sql = _adapter(tmp_path / "sql")
    settings = WorkerSettings(
        redis_url=redis_url, worker_id="w1", lora_modules={"sql": sql}, heartbeat_ttl_s=5
    )
    heartbeat = Heartbeat(redis_client, settings)
    heartbeat.start()
    try:
        records = {
            name.decode(): AdapterRecord.model_validate_json(raw)
            for name, raw in redis_client.hgetall(ADAPTERS).items()
        }
        assert set(records) == {"sql", "theirs"}  # another pool's adapter is left alone
        assert records["sql"].parent == settings.model
        assert records["sql"].root == str(sql.resolve())
        [announced] = live_workers_sync(redis_client)
        assert announced.adapters == {"sql": str(sql.resolve())}
    finally:
        heartbeat.stop()
