"""The deployment files, offline: every manifest under k8s/ against the Kubernetes schemas
(kubernetes-validate, strict) and the KEDA ScaledObject against KEDA's CRD schema (the
Prometheus Operator's objects: test_monitoring.py);
docker-compose.yml against the Compose Specification's JSON Schema; and the cross-references
a schema cannot see (selectors, ports, probes, queue names, settings names, GPU pinning)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from api.settings import ApiSettings
from shared.keys import queue_lists
from worker.settings import WebhookSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
K8S = ROOT / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES = [(path, doc) for path in MANIFESTS for doc in _documents(path)]
BASE = [doc for path, doc in RESOURCES if path.parent == K8S / "base"]


# Custom resources: validated against their CRD's schema, not Kubernetes' own.
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
BUILTIN = [r for r in RESOURCES if r[1]["kind"] not in CUSTOM_KINDS]


def _ids(items):
    return [
        f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in items
    ]


@pytest.mark.parametrize(("path", "doc"), BUILTIN, ids=_ids(BUILTIN))
def test_each_manifest_is_valid_kubernetes(path, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((DATA / "keda.sh_scaledobjects.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


SCALED = [r for r in RESOURCES if r[1]["kind"] == "ScaledObject"]


@pytest.mark.parametrize(("path", "doc"), SCALED, ids=_ids(SCALED))
def test_each_scaled_object_is_valid_against_kedas_crd(path, doc):
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    jsonschema.Draft7Validator(_crd_schema()).validate(doc)


def test_every_manifest_and_overlay_is_listed_in_its_kustomization():
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        listed = {(kustomization.parent / r).resolve() for r in spec.get("resources", [])}
        listed |= {
            (kustomization.parent / p["path"]).resolve()
            for p in spec.get("patches", [])
            if "path" in p  # else an inline patch
        }
        components = {(kustomization.parent / c).resolve() for c in spec.get("components", [])}
        for component in components:
            assert (component / "kustomization.yaml").exists(), f"{kustomization}: {component}"
        for path in kustomization.parent.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.resolve() in listed, f"{path} is not in {kustomization}"
        for target in listed:
            assert target.exists(), f"{kustomization} lists {target}, which does not exist"


def _by_kind(kind: str, docs=None) -> list[dict[str, Any]]:
    return [
        doc
        for doc in (docs if docs is not None else [d for _, d in RESOURCES])
        if doc["kind"] == kind
    ]


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def _env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    env = dict(config)
    for item in container.get("env", []):
        env[item["name"]] = item.get(
            "value", f"<from {next(iter(item.get('valueFrom', {})), '?')}>"
        )
    return env


def _config(docs) -> dict[str, str]:
    return next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "structq-config"
    )["data"]


def test_selectors_match_labels_and_services_point_at_real_ports():
    docs = [d for _, d in RESOURCES]
    for workload in _by_kind("Deployment") + _by_kind("StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for key, value in workload["spec"]["selector"]["matchLabels"].items():
            assert labels.get(key) == value, workload["metadata"]["name"]
    for service in _by_kind("Service"):
        pods = [
            w
            for w in _by_kind("Deployment", docs) + _by_kind("StatefulSet", docs)
            if all(
                w["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in service["spec"]["selector"].items()
            )
        ]
        assert pods, f"service {service['metadata']['name']} selects no pods"
        ports = {p["name"] for w in pods for c in _pod(w)["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    for pdb in _by_kind("PodDisruptionBudget"):
        assert any(
            all(
                w["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in pdb["spec"]["selector"]["matchLabels"].items()
            )
            for w in _by_kind("Deployment")
        )
    for hpa in _by_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in {
            d["metadata"]["name"] for d in _by_kind("Deployment")
        }


def test_gateway_probes_hit_its_health_endpoints_on_its_port():
    from api.main import create_app

    routes = {route.path for route in create_app(ApiSettings(insecure_no_auth=True)).routes}
    gateway = next(d for d in _by_kind("Deployment") if d["metadata"]["name"] == "gateway")
    container = _pod(gateway)["containers"][0]
    env = _env(container, _config(BASE))
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert str(port["containerPort"]) == env["STRUCTQ_PORT"] and env["STRUCTQ_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert {
        container["readinessProbe"]["httpGet"]["port"],
        container["livenessProbe"]["httpGet"]["port"],
    } == {"http"}


def _workers(docs=None) -> list[dict[str, Any]]:
    return [
        d
        for d in _by_kind("Deployment", docs)
        if _pod(d)["containers"][0]["command"] == ["python", "-m", "worker"]
    ]


@pytest.mark.parametrize("folder", [K8S / "base", K8S / "overlays" / "second-model"])
def test_worker_pools_drain_timeout_probes_gpu_and_the_queue_keda_watches(folder):
    docs = [d for path, d in RESOURCES if path.parent in (folder, K8S / "base")]
    config = _config(BASE)
    pools = [w for w in _workers(docs) if any(p.parent == folder for p, d in RESOURCES if d is w)]
    assert pools
    for pool in pools:
        pod = _pod(pool)
        container = pod["containers"][0]
        env = _env(container, config)
        drain = float(
            env.get(
                "STRUCTQ_DRAIN_TIMEOUT_S", WorkerSettings.model_fields["drain_timeout_s"].default
            )
        )
        assert pod["terminationGracePeriodSeconds"] == drain
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == ["python", "-m", "worker", "check"]
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load
        assert "STRUCTQ_WORKER_ID" in env  # what `check` looks the heartbeat up by
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["STRUCTQ_CACHE_DIR"].startswith(tuple(mounts))
        # KEDA watches exactly the lists this worker consumes: its queue and priority lists.
        scaled = next(
            s
            for s in _by_kind("ScaledObject", docs)
            if s["spec"]["scaleTargetRef"]["name"] == pool["metadata"]["name"]
        )
        watched = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
        assert watched == queue_lists(env["STRUCTQ_MODEL"])
        formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert sorted(re.findall(r"\w+", formula)) == sorted(
            t["name"] for t in scaled["spec"]["triggers"]
        )
        assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["cooldownPeriod"] >= drain
        redis_host = env["STRUCTQ_REDIS_URL"].split("//")[1].split("/")[0]
        assert all(t["metadata"]["address"] == redis_host for t in scaled["spec"]["triggers"])


def test_settings_names_in_the_manifests_are_ones_the_settings_read():
    known = _setting_names()
    for path, doc in RESOURCES:
        names = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        if doc["kind"] in ("Deployment", "StatefulSet"):
            names |= {e["name"] for c in _pod(doc)["containers"] for e in c.get("env", [])}
        for name in names:
            if name.startswith("STRUCTQ_"):
                assert name in known, f"{path.name}: {name} is read by no settings class"


def _setting_names() -> set[str]:
    names = set()
    for cls in (ApiSettings, WorkerSettings, WebhookSettings):
        names |= {f"STRUCTQ_{field.upper()}" for field in cls.model_fields}
    return names


def test_redis_keeps_an_append_only_file_and_never_evicts():
    redis = next(d for d in _by_kind("StatefulSet") if d["metadata"]["name"] == "redis")
    args = " ".join(_pod(redis)["containers"][0]["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert redis["spec"]["volumeClaimTemplates"]


# -- docker compose ------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads((DATA / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict)
    return {k: str(v) for k, v in env.items()}


def test_compose_services_healthchecks_and_dependencies():
    services = COMPOSE["services"]
    assert {"redis", "api", "webhooks", "worker-cpu"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and condition["condition"] == "service_healthy"
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert any(v.startswith("redis-data:") for v in services["redis"]["volumes"])
    assert services["api"]["ports"][0].endswith(":8000")
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_compose_gpu_workers_are_pinned_one_gpu_each():
    workers = {n: s for n, s in COMPOSE["services"].items() if n.startswith("worker-gpu")}
    assert len(workers) >= 2
    pinned = []
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"]
        assert len(devices[0]["device_ids"]) == 1
        pinned += devices[0]["device_ids"]
        env = _service_env(service)
        assert env["CUDA_VISIBLE_DEVICES"] == "0"  # the one GPU the container sees
        assert env["STRUCTQ_WORKER_ID"] == name
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "worker", "check"]
        drain = float(env["STRUCTQ_DRAIN_TIMEOUT_S"])
        assert service["stop_grace_period"] == f"{drain:g}s"
        assert service["profiles"] == ["gpu"]
    assert len(set(pinned)) == len(pinned), "two workers on one GPU"
    assert COMPOSE["services"]["worker-cpu"]["profiles"] == ["cpu"]


def test_compose_environment_names_are_ones_the_settings_read_and_secrets_are_required():
    known = _setting_names()
    for name, service in COMPOSE["services"].items():
        for variable in _service_env(service):
            if variable.startswith("STRUCTQ_"):
                assert variable in known, f"{name}: {variable}"
    api = _service_env(COMPOSE["services"]["api"])
    assert api["STRUCTQ_API_KEYS"].startswith("${STRUCTQ_API_KEYS:?")
    hooks = _service_env(COMPOSE["services"]["webhooks"])
    assert hooks["STRUCTQ_WEBHOOK_SECRET"].startswith("${STRUCTQ_WEBHOOK_SECRET:?")
    example = (ROOT / ".env.example").read_text()
    assert "STRUCTQ_API_KEYS=" in example and "STRUCTQ_WEBHOOK_SECRET=" in example


def test_images_run_as_non_root_from_pinned_bases():
    for dockerfile in (ROOT / "api" / "Dockerfile", ROOT / "worker" / "Dockerfile"):
        text = dockerfile.read_text()
        for base in re.findall(r"^FROM (\S+)", text, re.M):
            assert ":" in base and not base.endswith(":latest"), base
        assert "USER structq" in text
    assert (
        "vllm"
        not in (ROOT / "api" / "Dockerfile").read_text().split("RUN pip install")[1].split("\n")[0]
    )
    assert (ROOT / ".dockerignore").read_text()


def test_the_gateway_needs_neither_vllm_nor_torch():
    import subprocess
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gateway_deps = project["dependencies"] + project["optional-dependencies"]["api"]
    gateway_deps += project["optional-dependencies"]["webhooks"]
    heavy = ("vllm", "torch", "transformers", "xgrammar")
    assert not [d for d in gateway_deps if d.split("[")[0].split("=")[0].split(">")[0] in heavy]
    probe = (
        "import sys, api.main, api.compile_worker, worker.webhooks, outlines_core, llguidance, "
        "tokenizers; print(sorted(m for m in ('vllm', 'torch', 'transformers') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "STRUCTQ_WEBHOOK_SECRET": "whsec_" + "A" * 44}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the high-availability overlay (Sentinel) ------------------------------------------------

HA = K8S / "overlays" / "ha"


def _ha_patched() -> dict[tuple[str, str], dict[str, Any]]:
    """The base resources with the HA overlay's inline patches applied (its `replace` ops)."""
    import copy

    kustomization = yaml.safe_load((HA / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base", "redis-ha.yaml"]
    docs = {(d["kind"], d["metadata"]["name"]): copy.deepcopy(d) for d in BASE}
    for patch in kustomization["patches"]:
        target = docs[(patch["target"]["kind"], patch["target"]["name"])]
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] == "replace"
            *parents, leaf = op["path"].strip("/").split("/")
            node = target
            for part in parents:
                node = node[part]
            assert leaf in node, op["path"]  # a replace of something that exists
            node[leaf] = op["value"]
    for doc in _documents(HA / "redis-ha.yaml"):
        docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_the_ha_overlay_connects_everything_through_three_sentinels():
    from shared.redis_pools import parse_sentinel

    docs = _ha_patched()
    url = docs[("ConfigMap", "structq-config")]["data"]["STRUCTQ_REDIS_URL"]
    target = parse_sentinel(url)
    assert target is not None and target.service == "structq"
    sentinels = docs[("StatefulSet", "redis-sentinel")]
    service = sentinels["spec"]["serviceName"]
    assert docs[("Service", service)]["spec"]["clusterIP"] == "None"
    assert target.sentinels == [
        (f"redis-sentinel-{i}.{service}.structq.svc.cluster.local", 26379)
        for i in range(sentinels["spec"]["replicas"])
    ]
    assert sentinels["spec"]["replicas"] == 3
    scripts = docs[("ConfigMap", "redis-ha-scripts")]["data"]
    assert "sentinel monitor structq $primary 6379 2" in scripts["sentinel.sh"]
    for flag in ("--appendonly yes", "--maxmemory-policy noeviction"):
        assert flag in scripts["node.sh"]
    assert docs[("StatefulSet", "redis-node")]["spec"]["replicas"] == 2
    assert docs[("StatefulSet", "redis")]["spec"]["replicas"] == 0
    # KEDA reads the very lists the pool's worker takes from, through the same Sentinels.
    scaled = docs[("ScaledObject", "worker-smollm2")]
    jsonschema.validate(scaled, _crd_schema())
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-sentinel"}
    assert [t["metadata"]["listName"] for t in triggers] == queue_lists("SmolLM2-135M-Instruct")
    for trigger in triggers:
        addresses = [a.strip() for a in trigger["metadata"]["addresses"].split(",")]
        assert addresses == [f"{host}:{port}" for host, port in target.sentinels]
        assert trigger["metadata"]["sentinelMaster"] == target.service
