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
from worker.adapters import MAX_DEFAULT_LORAS
from worker.engine_args import OWNED_ARGS
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
        # One per tensor/pipeline-parallel rank (STRUCTQ_ENGINE_ARGS): checked below.
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
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


def _bytes(size: str) -> int:
    """A compose size ("1gb", "512m") in bytes."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.lower())
    assert match, size
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def test_compose_vllm_workers_have_room_in_dev_shm():
    """vLLM's engine queue takes 160 MiB of /dev/shm; a container has 64 MB unless told (the
    CPU worker died at every start under podman until it was given more)."""
    workers = {
        name: service
        for name, service in COMPOSE["services"].items()
        if service.get("command") == ["python", "-m", "worker"]
    }
    assert {"worker-cpu", "worker-gpu0"} <= set(workers)
    for name, service in workers.items():
        assert _bytes(str(service.get("shm_size", "64m"))) >= 512 * 2**20, name


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


# -- every overlay, rendered: pools, their ScaledObjects, engine arguments, adapters ---------

OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
FOLDERS = [K8S / "base", *OVERLAYS]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 `add`, `replace` and `remove` operations (what the overlays use)."""
    for op in ops:
        *parents, leaf = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            if op["op"] == "add":
                node.insert(len(node) if leaf == "-" else int(leaf), op["value"])
            elif op["op"] == "replace":
                node[int(leaf)] = op["value"]
            else:
                assert op["op"] == "remove", op
                del node[int(leaf)]
        elif op["op"] == "remove":
            del node[leaf]
        else:
            assert op["op"] in ("add", "replace"), op
            assert op["op"] == "add" or leaf in node, f"replace of a missing {op['path']}"
            node[leaf] = op["value"]


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """A strategic-merge patch, as far as the overlays need it: maps merge key by key, lists of
    named items merge by name, other values are replaced."""
    for key, value in patch.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif (
            isinstance(old, list)
            and isinstance(value, list)
            and all(isinstance(v, dict) and "name" in v for v in old + value)
        ):
            by_name = {item["name"]: item for item in old}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    old.append(item)
        else:
            into[key] = value


def _build(folder: Path) -> list[dict[str, Any]]:
    """What `kustomize build folder` yields, for the features k8s/ uses (resources, patches by
    file or inline JSON 6902, components, namespace); checked against kubectl when present."""
    import copy

    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for entry in [*spec.get("resources", []), *spec.get("components", [])]:
        path = folder / entry
        if path.is_dir():
            docs += _build(path)
        else:
            docs += [copy.deepcopy(d) for d in _documents(path)]
    for patch in spec.get("patches", []):
        if "path" in patch:
            for change in _documents(folder / patch["path"]):
                target = next(
                    d
                    for d in docs
                    if (d["kind"], d["metadata"]["name"])
                    == (change["kind"], change["metadata"]["name"])
                )
                _merge(target, change)
        else:
            targets = [
                d
                for d in docs
                if all(d.get(k, d["metadata"].get(k)) == v for k, v in patch["target"].items())
            ]
            assert targets, f"{folder}: patch target {patch['target']} matches nothing"
            for target in targets:
                _json_patch(target, yaml.safe_load(patch["patch"]))
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = spec["namespace"]
    return docs


BUILT = {folder: _build(folder) for folder in FOLDERS}


def _folder_ids(folders) -> list[str]:
    return [str(f.relative_to(K8S)) for f in folders]


@pytest.mark.parametrize("folder", FOLDERS, ids=_folder_ids(FOLDERS))
def test_the_rendering_here_is_what_kustomize_builds(folder):
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here (its `kustomize` checks this file's rendering)")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    assert built == {(d["kind"], d["metadata"]["name"]): d for d in BUILT[folder]}


RENDERED = [
    (folder, doc)
    for folder in OVERLAYS
    for doc in BUILT[folder]
    if doc["kind"] in ("Deployment", "ScaledObject", "ConfigMap")
]


@pytest.mark.parametrize(
    ("folder", "doc"),
    RENDERED,
    ids=[f"{f.name}:{d['kind']}/{d['metadata']['name']}" for f, d in RENDERED],
)
def test_each_overlays_patched_objects_are_still_valid(folder, doc):
    if doc["kind"] == "ScaledObject":
        jsonschema.Draft7Validator(_crd_schema()).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _pool_model(pool: dict[str, Any], config: dict[str, str]) -> str:
    return _env(_pod(pool)["containers"][0], config)["STRUCTQ_MODEL"]


@pytest.mark.parametrize("folder", FOLDERS, ids=_folder_ids(FOLDERS))
def test_one_scaled_object_per_pool_each_on_its_own_models_queue(folder):
    _check_pools(BUILT[folder])


def test_the_pool_check_catches_a_shared_queue_and_a_second_scaled_object():
    import copy

    docs = copy.deepcopy(BUILT[K8S / "overlays" / "second-model"])
    qwen = next(d for d in _by_kind("ScaledObject", docs) if d["metadata"]["name"] == "worker-qwen")
    for trigger, name in zip(
        qwen["spec"]["triggers"], queue_lists("SmolLM2-135M-Instruct"), strict=True
    ):
        trigger["metadata"]["listName"] = name
    with pytest.raises(AssertionError, match="worker-qwen"):
        _check_pools(docs)
    docs = copy.deepcopy(BUILT[K8S / "overlays" / "second-model"])
    docs.append(copy.deepcopy(_by_kind("ScaledObject", docs)[0]))
    with pytest.raises(AssertionError, match="exactly one ScaledObject"):
        _check_pools(docs)


def _check_pools(docs: list[dict[str, Any]]) -> None:
    """Each worker Deployment (pool) has exactly one ScaledObject, scaling on the lists of its
    own model's queue; no two pools share a model; the gateway takes exactly the pools' models."""
    config = _config(docs)
    pools = {p["metadata"]["name"]: p for p in _workers(docs)}
    scaled = _by_kind("ScaledObject", docs)
    assert pools
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scaled]
    assert sorted(targets) == sorted(pools), "each worker Deployment needs exactly one ScaledObject"
    models = [_pool_model(p, config) for p in pools.values()]
    assert len(set(models)) == len(models), "two pools serve one model (they would share a queue)"
    for scaled_object in scaled:
        pool = pools[scaled_object["spec"]["scaleTargetRef"]["name"]]
        model = _pool_model(pool, config)
        assert pool["metadata"]["labels"]["structq.dev/model"] == model
        watched = [t["metadata"]["listName"] for t in scaled_object["spec"]["triggers"]]
        assert watched == queue_lists(model), scaled_object["metadata"]["name"]
    # The gateway accepts exactly the models that have a pool.
    gateway = set(ApiSettings(insecure_no_auth=True, **_settings_fields(config)).models)
    assert gateway == set(models)
    pod_selectors = [
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in pools.values()
    ]
    assert len(set(pod_selectors)) == len(pod_selectors), "two pools select each other's pods"


def _settings_fields(config: dict[str, str]) -> dict[str, Any]:
    """The gateway's model settings out of the ConfigMap, parsed as the gateway parses them."""
    fields: dict[str, Any] = {"model": config["STRUCTQ_MODEL"]}
    if "STRUCTQ_EXTRA_MODELS" in config:
        fields["extra_models"] = json.loads(config["STRUCTQ_EXTRA_MODELS"])
    return fields


@pytest.mark.parametrize("folder", OVERLAYS, ids=_folder_ids(OVERLAYS))
def test_settings_names_in_each_rendered_overlay_are_ones_the_settings_read(folder):
    known = _setting_names()
    for doc in BUILT[folder]:
        names = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        if doc["kind"] in ("Deployment", "StatefulSet"):
            names |= {e["name"] for c in _pod(doc)["containers"] for e in c.get("env", [])}
        for name in names:
            if name.startswith("STRUCTQ_"):
                assert name in known, f"{folder.name}: {doc['metadata']['name']}: {name}"


def _check_engine_args(engine_args: dict[str, Any]) -> None:
    """The worker's own start-up check of STRUCTQ_ENGINE_ARGS, against the installed vLLM's
    EngineArgs (vllm is in the worker's extras only)."""
    pytest.importorskip("vllm")
    from worker.engine_args import check_engine_args

    check_engine_args(engine_args)


POOLS = [(folder, pool) for folder in FOLDERS for pool in _workers(BUILT[folder])]


@pytest.mark.parametrize(
    ("folder", "pool"),
    POOLS,
    ids=[f"{f.name}:{p['metadata']['name']}" for f, p in POOLS],
)
def test_each_pools_engine_arguments_and_adapters(folder, pool):
    docs = BUILT[folder]
    config = _config(docs)
    container = _pod(pool)["containers"][0]
    env = _env(container, config)
    engine_args = json.loads(env.get("STRUCTQ_ENGINE_ARGS", "{}"))
    adapters = json.loads(env.get("STRUCTQ_LORA_MODULES", "{}"))
    assert isinstance(engine_args, dict) and isinstance(adapters, dict)
    for key in OWNED_ARGS:
        assert key not in engine_args, f"{key} is structq's: {OWNED_ARGS[key]}"
    # One GPU per tensor- and pipeline-parallel rank, all in the pod.
    ranks = engine_args.get("tensor_parallel_size", 1) * engine_args.get(
        "pipeline_parallel_size", 1
    )
    assert container["resources"]["limits"]["nvidia.com/gpu"] == ranks
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    models = {_pool_model(p, config) for p in _workers(docs)}
    for name, path in adapters.items():
        assert name not in models, f"adapter {name} has a pool model's name"
        assert path.startswith(tuple(f"{m}/" for m in mounts)), f"{name}: {path} is not mounted"
    if adapters:
        default = min(len(adapters), MAX_DEFAULT_LORAS)
        assert 1 <= engine_args.get("max_loras", default) <= len(adapters)
        assert engine_args.get("max_cpu_loras", len(adapters)) >= engine_args.get("max_loras", 1)
    else:
        assert not {"enable_lora", "max_loras", "max_lora_rank"} & set(engine_args)
    if engine_args:
        _check_engine_args(engine_args)
