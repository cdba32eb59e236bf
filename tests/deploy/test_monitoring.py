"""The monitoring files, offline: the Prometheus Operator's objects in k8s/ (ServiceMonitor,
PodMonitor, PrometheusRule) against their CRDs' schemas and what they point at; the plain rule
file and compose's Prometheus configuration with promtool (`check`, and unit tests of every
alert); the Grafana dashboard and its provisioning; and every metric these and the KEDA
triggers use against the contract in docs/observability.md."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scripts import prometheus_rules
from tests.deploy.test_manifests import COMPOSE, DATA, K8S, RESOURCES, ROOT, _ids, _pod

DOCS = ROOT / "docs" / "observability.md"
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
COMPONENT = K8S / "components" / "monitoring"
THRESHOLD = "structq:queue_oldest_age_threshold_seconds"

CRDS = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}
MONITORING = [(path, doc) for path, doc in RESOURCES if doc["kind"] in CRDS]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in RESOURCES if doc["kind"] == kind]


def _closed(schema: Any) -> Any:
    """``schema`` with unknown fields refused (as the API server's strict field validation
    does): every object schema that lists its properties and leaves nothing else open."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


def _crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((DATA / CRDS[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _closed(version["schema"]["openAPIV3Schema"])


# -- the Kubernetes objects ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "doc"), MONITORING, ids=_ids(MONITORING))
def test_each_monitoring_object_is_valid_against_the_operators_crd(path, doc):
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["namespace"] == "structq"
    jsonschema.Draft7Validator(_crd_schema(doc["kind"])).validate(doc)


def test_the_closed_schema_refuses_a_misspelt_field():
    monitor = copy.deepcopy(_of_kind("PodMonitor")[0])
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_crd_schema("PodMonitor")).validate(monitor)


def test_monitoring_is_a_component_the_base_applies_without():
    assert {doc["kind"] for _, doc in MONITORING} == set(CRDS)
    assert all(path.parent == COMPONENT for path, _ in MONITORING)
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    overlay = yaml.safe_load((K8S / "overlays" / "monitoring" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base"]
    assert overlay["components"] == ["../../components/monitoring"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _deployments() -> list[dict[str, Any]]:
    return _of_kind("Deployment")


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_the_service_monitor_scrapes_the_gateways_http_port():
    from api.main import create_app
    from api.settings import ApiSettings

    routes = {route.path for route in create_app(ApiSettings(insecure_no_auth=True)).routes}
    (monitor,) = _of_kind("ServiceMonitor")
    services = [
        s
        for s in _of_kind("Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["gateway"]
    (service,) = services
    (gateway,) = [d for d in _deployments() if d["metadata"]["name"] == "gateway"]
    container = _pod(gateway)["containers"][0]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics" in routes
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
        # GET /metrics is on the gateway's HTTP port (docs/observability.md).
        assert str(target["containerPort"]) == _container_env(container)["STRUCTQ_PORT"]


def test_pod_monitors_scrape_every_worker_and_the_webhook_worker_on_its_metrics_port():
    monitors = _of_kind("PodMonitor")
    scraped: set[str] = set()
    for monitor in monitors:
        selected = [
            d
            for d in _deployments()
            if _selects(monitor["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert selected, f"PodMonitor {monitor['metadata']['name']} selects no pods"
        for deployment in selected:
            container = _pod(deployment)["containers"][0]
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["path"] == "/metrics"
                port = next(p for p in container.get("ports", []) if p["name"] == endpoint["port"])
                # Set explicitly, and the port the container declares.
                env = _container_env(container)
                assert str(port["containerPort"]) == env["STRUCTQ_METRICS_PORT"]
            scraped.add(deployment["metadata"]["name"])
    python = {
        d["metadata"]["name"]: _pod(d)["containers"][0]["command"]
        for d in _deployments()
        if _pod(d)["containers"][0]["command"][:2] == ["python", "-m"]
    }
    workers = {name for name, cmd in python.items() if cmd[2] in ("worker", "worker.webhooks")}
    assert {"webhooks", "worker-smollm2", "worker-qwen"} <= workers
    assert workers <= scraped


def test_worker_and_webhook_metrics_ports_are_the_documented_defaults():
    from worker.settings import WebhookSettings, WorkerSettings

    ports = {}
    for deployment in _deployments():
        container = _pod(deployment)["containers"][0]
        if "STRUCTQ_METRICS_PORT" in _container_env(container):
            ports[container["command"][2]] = int(_container_env(container)["STRUCTQ_METRICS_PORT"])
    assert ports == {
        "worker": WorkerSettings.model_fields["metrics_port"].default,
        "worker.webhooks": WebhookSettings.model_fields["metrics_port"].default,
    }


# -- the rules -----------------------------------------------------------------------------


def _prometheus_rule() -> dict[str, Any]:
    (rule,) = _of_kind("PrometheusRule")
    return rule


def _rules() -> list[dict[str, Any]]:
    return [r for group in _prometheus_rule()["spec"]["groups"] for r in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    assert len(alerts) == len([r for r in _rules() if "alert" in r]), "an alert name twice"
    return alerts


def test_the_rule_file_is_the_prometheus_rules_groups():
    on_disk = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    assert on_disk == {"groups": _prometheus_rule()["spec"]["groups"]}, (
        "deploy/prometheus/rules.yml differs from k8s/components/monitoring/prometheusrule.yaml: "
        "run .venv/bin/python -m scripts.prometheus_rules"
    )
    assert (PROMETHEUS / "rules.yml").read_text().startswith(prometheus_rules.HEADER)


def test_the_alerts_of_the_issue_exist_with_a_severity_and_their_text():
    alerts = _alerts()
    assert set(alerts) == {
        "StructqJobsQueuedNoLiveWorker",
        "StructqQueuedJobTooOld",
        "StructqJobFailureRatioHigh",
        "StructqEngineDied",
        "StructqWebhookGaveUp",
    }
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
    assert alerts["StructqJobsQueuedNoLiveWorker"]["labels"]["severity"] == "critical"
    assert THRESHOLD in alerts["StructqQueuedJobTooOld"]["expr"]


def _json_pointer(doc: Any, pointer: str) -> tuple[Any, str | int]:
    *parents, leaf = pointer.strip("/").split("/")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(leaf) if isinstance(node, list) else leaf


def test_the_documented_patch_sets_the_oldest_job_threshold():
    """docs/observability.md shows a kustomize patch that changes the threshold: it replaces
    the expr of the threshold's recording rule, and the result is still a valid object."""
    first = _prometheus_rule()["spec"]["groups"][0]["rules"][0]
    assert first == {"record": THRESHOLD, "expr": first["expr"]}
    assert re.fullmatch(r"vector\(\d+\)", first["expr"])
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    (block,) = [b for b in blocks if "kind: PrometheusRule" in b and "op: replace" in b]
    (patch,) = yaml.safe_load(block)["patches"]
    assert patch["target"] == {"kind": "PrometheusRule", "name": "structq"}
    patched = copy.deepcopy(_prometheus_rule())
    for op in yaml.safe_load(patch["patch"]):
        assert op["op"] == "replace"
        node, leaf = _json_pointer(patched, op["path"])
        assert node["record"] == THRESHOLD and leaf == "expr"
        node[leaf] = op["value"]
    assert patched["spec"]["groups"][0]["rules"][0]["expr"] != first["expr"]
    jsonschema.Draft7Validator(_crd_schema("PrometheusRule")).validate(patched)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed (Debian: apt-get install --no-install-recommends "
            "prometheus; scripts/setup.sh does it)"
        )
    return path


def _run_promtool(*args: str | Path, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [_promtool(), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_promtool_checks_the_rule_file():
    assert "SUCCESS" in _run_promtool("check", "rules", PROMETHEUS / "rules.yml")


def test_promtool_checks_the_compose_prometheus_configuration_and_its_rules():
    out = _run_promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert f"SUCCESS: {len(_rules())} rules found" in out


def _labels_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    return {"series": name + _labels_text(labels), "values": values}


def _alerting(at: str, name: str, *label_sets: dict[str, str]) -> dict[str, Any]:
    severity = _alerts()[name]["labels"]["severity"]
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": {**labels, "severity": severity}} for labels in label_sets],
    }


def _expr_test(at: str, alert: str, *samples: tuple[dict[str, str], float]) -> dict[str, Any]:
    return {
        "expr": _alerts()[alert]["expr"],
        "eval_time": at,
        "exp_samples": [{"labels": _labels_text(labels), "value": v} for labels, v in samples],
    }


UNIT_TESTS: list[dict[str, Any]] = [
    # Two gateway replicas export the same queue: counted once. Model b has a live worker;
    # model c has never had one (no structq_workers_live series at all); d has nothing queued.
    {
        "interval": "1m",
        "input_series": [
            _series("structq_queue_jobs", {"model": "a", "instance": "gw1"}, "4x40"),
            _series("structq_queue_jobs", {"model": "a", "instance": "gw2"}, "4x40"),
            _series("structq_workers_live", {"model": "a", "instance": "gw1"}, "0x40"),
            _series("structq_queue_jobs", {"model": "b", "instance": "gw1"}, "7x40"),
            _series("structq_workers_live", {"model": "b", "instance": "gw1"}, "2x40"),
            _series("structq_queue_jobs", {"model": "c", "instance": "gw1"}, "3x40"),
            _series("structq_queue_jobs", {"model": "d", "instance": "gw1"}, "0x40"),
            _series("structq_workers_live", {"model": "d", "instance": "gw1"}, "0x40"),
        ],
        "alert_rule_test": [
            _alerting("19m", "StructqJobsQueuedNoLiveWorker"),
            _alerting("21m", "StructqJobsQueuedNoLiveWorker", {"model": "a"}, {"model": "c"}),
        ],
        "promql_expr_test": [
            _expr_test(
                "21m", "StructqJobsQueuedNoLiveWorker", ({"model": "a"}, 4), ({"model": "c"}, 3)
            )
        ],
    },
    # The oldest job's age grows a minute a minute and passes the 900 s threshold at 15m.
    {
        "interval": "1m",
        "input_series": [
            _series(
                "structq_queue_oldest_age_seconds", {"model": "a", "instance": "gw1"}, "0+60x40"
            ),
            _series(
                "structq_queue_oldest_age_seconds", {"model": "a", "instance": "gw2"}, "0+60x40"
            ),
            _series("structq_queue_oldest_age_seconds", {"model": "b", "instance": "gw1"}, "0x40"),
        ],
        "alert_rule_test": [
            _alerting("16m", "StructqQueuedJobTooOld"),
            _alerting("19m", "StructqQueuedJobTooOld", {"model": "a"}),
        ],
    },
    # a: 20% of its jobs fail; b: half fail but too few jobs end; c: 5% fail.
    {
        "interval": "1m",
        "input_series": [
            _series(
                "structq_worker_jobs_finished_total",
                {"model": "a", "status": "succeeded", "code": ""},
                "0+8x60",
            ),
            _series(
                "structq_worker_jobs_finished_total",
                {"model": "a", "status": "failed", "code": "output_invalid"},
                "0+2x60",
            ),
            _series(
                "structq_worker_jobs_finished_total",
                {"model": "b", "status": "succeeded", "code": ""},
                "0+0.5x60",
            ),
            _series(
                "structq_worker_jobs_finished_total",
                {"model": "b", "status": "failed", "code": "engine_rejected"},
                "0+0.5x60",
            ),
            _series(
                "structq_worker_jobs_finished_total",
                {"model": "c", "status": "succeeded", "code": ""},
                "0+19x60",
            ),
            _series(
                "structq_worker_jobs_finished_total",
                {"model": "c", "status": "failed", "code": "output_truncated"},
                "0+1x60",
            ),
        ],
        "alert_rule_test": [
            _alerting("5m", "StructqJobFailureRatioHigh"),
            _alerting("30m", "StructqJobFailureRatioHigh", {"model": "a"}),
        ],
    },
    # w1's engine dies at 11m (its counter scraped at 1); w2 starts at 20m (0: no death); w3's
    # counter is first seen at 1 (the death before the first scrape of a new pod).
    {
        "interval": "1m",
        "input_series": [
            _series("structq_engine_deaths_total", {"model": "a", "instance": "w1"}, "0x10 1x40"),
            _series("structq_engine_deaths_total", {"model": "a", "instance": "w2"}, "_x20 0x30"),
            _series("structq_engine_deaths_total", {"model": "b", "instance": "w3"}, "_x25 1x25"),
        ],
        "alert_rule_test": [
            _alerting("5m", "StructqEngineDied"),
            _alerting("12m", "StructqEngineDied", {"model": "a"}),
            _alerting("27m", "StructqEngineDied", {"model": "b"}),
            _alerting("45m", "StructqEngineDied"),
        ],
    },
    # A give-up's first one creates its series (at 1): caught as well as a later increase.
    {
        "interval": "1m",
        "input_series": [
            _series(
                "structq_webhook_attempts_total",
                {"event": "job.completed", "outcome": "gave_up", "instance": "h"},
                "_x10 1x30",
            ),
            _series(
                "structq_webhook_attempts_total",
                {"event": "batch.completed", "outcome": "gave_up", "instance": "h"},
                "0x10 1x30",
            ),
            _series(
                "structq_webhook_attempts_total",
                {"event": "job.started", "outcome": "delivered", "instance": "h"},
                "0+5x40",
            ),
        ],
        "alert_rule_test": [
            _alerting("5m", "StructqWebhookGaveUp"),
            _alerting(
                "12m",
                "StructqWebhookGaveUp",
                {"event": "batch.completed"},
                {"event": "job.completed"},
            ),
            _alerting("30m", "StructqWebhookGaveUp"),
        ],
    },
]


def test_every_alert_fires_when_it_should_and_not_otherwise(tmp_path):
    """promtool's rule unit tests, on the rules without their annotations (promtool compares
    rendered annotations too; `check rules` has checked their templates)."""
    groups = copy.deepcopy(_prometheus_rule()["spec"]["groups"])
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tested = {case["alertname"] for test in UNIT_TESTS for case in test["alert_rule_test"]}
    assert tested == set(_alerts())
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": UNIT_TESTS}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in _run_promtool("test", "rules", "tests.yml", cwd=tmp_path)


# -- docker compose: Prometheus and Grafana -------------------------------------------------


def _prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def test_compose_prometheus_scrapes_every_structq_service_on_its_port():
    services = COMPOSE["services"]
    targets = {
        target
        for job in _prometheus_config()["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = set()
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("structq-"):
            continue
        env = {k: str(v) for k, v in service["environment"].items()}
        port = (
            env["STRUCTQ_PORT"] if service["command"][2] == "api" else env["STRUCTQ_METRICS_PORT"]
        )
        expected.add(f"{name}:{port}")
    assert {"api:8000", "webhooks:9102", "worker-cpu:9101", "worker-gpu0:9101"} <= expected
    assert expected <= targets
    for target in targets - expected:
        assert target == "localhost:9090", f"{target} is no compose service's metrics port"


def test_compose_prometheus_reads_the_files_it_is_given_and_grafana_is_a_profile():
    prometheus = COMPOSE["services"]["prometheus"]
    assert "profiles" not in prometheus  # evaluates the alerts whenever the stack runs
    mounts = _mounts(prometheus)
    config_path = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    assert mounts[config_path] == "deploy/prometheus/prometheus.yml"
    config_dir = config_path.rsplit("/", 1)[0]
    for rule_file in _prometheus_config()["rule_files"]:
        assert mounts[f"{config_dir}/{rule_file}"] == f"deploy/prometheus/{rule_file}"
    grafana = COMPOSE["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"]
    for service in (prometheus, grafana):
        image, tag = service["image"].rsplit(":", 1)
        assert tag not in ("", "latest") and image in ("prom/prometheus", "grafana/grafana")
        for host_path in _mounts(service).values():
            assert (ROOT / host_path).exists(), host_path


def test_grafana_provisioning_points_at_compose_prometheus_and_the_mounted_dashboard():
    grafana = COMPOSE["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in COMPOSE["services"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "structq.yml").read_text())[
        "providers"
    ]
    dashboards = {
        target.rsplit("/", 1)[0]: host for target, host in mounts.items() if host.endswith(".json")
    }
    assert dashboards == {provider["options"]["path"]: "deploy/grafana/structq.json"}


# -- the dashboard -------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "structq.json").read_text())


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def test_the_dashboard_has_a_datasource_variable_and_every_panel_a_query():
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def _dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for panel in _panels() for t in panel["targets"]]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_the_dashboard_shows_what_the_issue_asks_for():
    exprs = "\n".join(_dashboard_exprs())
    for needed in (
        "structq_queue_jobs",
        "structq_queue_oldest_age_seconds",
        "rate(structq_generation_tokens_total",
        'vllm[:_]num_requests_running"',
        'vllm[:_]num_requests_waiting"',
        "structq_worker_inflight_jobs",
        'vllm[:_]kv_cache_usage_perc"',
        "structq_queue_messages",
        'structq_worker_jobs_finished_total{status="failed"',
        "structq_refusals_total",
        "structq_webhook_attempts_total",
    ):
        assert needed in exprs, needed
    for histogram in ("structq_job_duration_seconds", "structq_job_queue_wait_seconds"):
        for q in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket" in exprs


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each panel query, with Grafana's variables given values, as a recording rule."""
    rules = []
    for i, expr in enumerate(e for e in _dashboard_exprs() if not e.startswith("label_values(")):
        expr = expr.replace("$__rate_interval", "5m").replace("$model", ".*")
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _run_promtool("check", "rules", tmp_path / "queries.yml")


# -- the contract: docs/observability.md ---------------------------------------------------

# Labels Prometheus adds to every scraped series (a ServiceMonitor/PodMonitor adds more).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "service", "endpoint"}
METRIC = r"(?<![\w:])(structq_\w+|vllm:\w+)"


def _contract() -> dict[str, tuple[str, set[str]]]:
    """Metric name -> (type, labels), from the tables of docs/observability.md."""
    metrics = {}
    header: list[str] = []
    for line in DOCS.read_text().splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        if header != ["Metric", "Type", "Labels", "What"]:
            continue
        names = re.findall(r"`((?:structq_|vllm:)[\w:]+)`", cells[0])
        for name in names:
            metrics[name] = (cells[1], set(re.findall(r"`(\w+)`", cells[2])))
    assert len(metrics) > 20 and "structq_queue_jobs" in metrics
    return metrics


def _keda_queries() -> list[str]:
    return [
        t["metadata"]["query"]
        for _, doc in RESOURCES
        if doc["kind"] == "ScaledObject"
        for t in doc["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]


def _uses() -> dict[str, list[str]]:
    return {
        "rules": [r["expr"] for r in _rules()],
        "dashboard": _dashboard_exprs(),
        "KEDA": _keda_queries(),  # none: docs/deploy.md says why the triggers are Redis lists
    }


def test_every_metric_the_rules_dashboard_and_keda_use_is_in_the_contract():
    contract = _contract()
    recorded = {r["record"] for r in _rules() if "record" in r}
    for where, exprs in _uses().items():
        for expr in exprs:
            for name in re.findall(r"(?<![\w:])(structq:[\w:]+)", expr):
                assert name in recorded, f"{where}: {name} is recorded by no rule"
            for name in re.findall(METRIC, expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if base != name and base in contract:
                    assert contract[base][0] == "histogram", f"{where}: {name}"
                    name = base
                assert name in contract, f"{where}: {name} is not in docs/observability.md"


def test_every_label_matcher_is_a_label_the_metric_has():
    contract = _contract()
    for where, exprs in _uses().items():
        for expr in exprs:
            for name, matchers in re.findall(METRIC + r"\{([^}]*)\}", expr):
                base = re.sub(r"_bucket$", "", name)
                labels = contract[base][1] | TARGET_LABELS | ({"le"} if base != name else set())
                for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                    assert label in labels, f"{where}: {name} has no label {label}"
