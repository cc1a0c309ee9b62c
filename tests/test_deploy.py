"""Deployment files, checked offline against the code (no Docker engine, no cluster needed).

- Kubernetes: every overlay is rendered (tests/kustomize.py, a small kustomize subset; compared
  with `kustomize build` / `kubectl kustomize` when one is installed), every object is validated
  with kubernetes-validate in strict mode, KEDA's CRDs structurally; then names, selectors, ports,
  probes, security contexts, grace periods and the environment are cross-checked with the
  settings code and shared/keys.py.
- Compose: validated with check-jsonschema's builtin compose-spec schema, then interpolated with
  .env.example and cross-checked the same way.
- Dockerfile, .env.example, the healthcheck script and the Grafana dashboard likewise.

The variables the processes read come from the settings modules themselves (their `env.*("NAME"`
calls, parsed with `ast` by shared/settings_vars.py), so a misspelled or stale variable in any
deploy file fails here. The file formats' readers are in tests/deploy_formats.py.
"""

from __future__ import annotations

import ast
import base64
import copy
import importlib
import importlib.util
import json
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from edge.settings import EdgeSettings
from shared import keys
from shared.config import ConfigError
from shared.settings_vars import all_variables, env_reads, variable_methods, variables_read
from tests import deploy_formats
from tests.deploy_formats import dotenv, exec_form, interpolate
from tests.kustomize import by_key, containers, kustomization, real_kustomize, render
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HEALTHCHECK_SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DASHBOARD_DIR = ROOT / "deploy" / "grafana"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

ROLES = ("edge", "worker", "botsim")
SETTINGS = {"edge": EdgeSettings, "worker": WorkerSettings}
GRPC_PORT_SPAN = 64  # process i of the edge binds the first free port of GRPC_PORT..GRPC_PORT+63
BOTSIM_PORT = 3100  # botsim's --port default
K8S_VERSIONS = ("1.31", kubernetes_validate.latest_version())
FAKE_POD_IP = "10.1.2.3"
FAKE_CONTAINER_IP = "172.18.0.5"

# Minimal valid environments, used to find each variable's default and which ones are required.
MINIMAL_ENV = {
    "edge": {
        "PUBLIC_URL": "https://voice.example.com",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "token",
    },
    "worker": {"BOTPRESS_CHAT_URL": "http://botsim:3100/x"},
}


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    # EdgeSettings resolves the container's own hostname when bound to 0.0.0.0 without an
    # advertised host (compose); a CI box's hostname may not resolve.
    monkeypatch.setattr(socket, "gethostbyname", lambda host: FAKE_CONTAINER_IP)


# =============================================================================================
# What the code reads
# =============================================================================================
def _module_of(path: Path) -> ModuleType:
    return importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))


def settings_defaults(role: str) -> dict[str, str]:
    """NAME -> default as the environment would spell it, where the default is a constant."""
    out: dict[str, str] = {}
    for read in env_reads(role):
        module, expr = _module_of(read.path), read.default
        if isinstance(expr, ast.Constant) and expr.value is not None:
            value = expr.value
        elif isinstance(expr, ast.Name) and hasattr(module, expr.id):
            value = getattr(module, expr.id)
        else:
            continue
        out[read.name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def load_settings(role: str, env: Mapping[str, str]) -> Any:
    return SETTINGS[role].from_env(dict(env))


def required_vars(role: str) -> set[str]:
    """Variables whose absence from a minimal valid environment stops the process."""
    base = MINIMAL_ENV[role]
    load_settings(role, base)
    required = set()
    for name in base:
        try:
            load_settings(role, {k: v for k, v in base.items() if k != name})
        except ConfigError:
            required.add(name)
    return required


def int_setting(role: str, env: Mapping[str, str], name: str) -> int:
    raw = env.get(name) or settings_defaults(role)[name]
    return int(float(raw))


def check_module_command(command: list[str]) -> str:
    """`python -m <role> ...` where <role> is a real entry point; returns the role."""
    assert command[:2] == ["python", "-m"], f"not `python -m <module>`: {command}"
    role = command[2]
    assert role in ROLES, f"unknown role {role!r} in {command}"
    assert importlib.util.find_spec(f"{role}.__main__") is not None, f"{role} has no __main__"
    return role


class _Recorder(dict):  # type: ignore[type-arg]
    def __init__(self, data: Mapping[str, str]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


@pytest.mark.parametrize("role", ["edge", "worker"])
def test_settings_parser_sees_every_variable_read(role: str) -> None:
    """The ast parse (shared/settings_vars.py) must not miss a variable the settings read."""
    parsed = variable_methods(role)
    variants = [MINIMAL_ENV[role]]
    if role == "worker":
        variants.append({"BOTPRESS_WEBHOOK_ID": "abc"})
    for env in variants:
        recorder = _Recorder(env)
        load_settings(role, recorder)
        assert recorder.read - set(parsed) == set(), "settings read variables the parse missed"
    assert len(parsed) >= 10


def test_deployed_variables_exist() -> None:
    """The variables the deploy files depend on are read under these names."""
    assert {
        "GRPC_BIND_HOST",
        "GRPC_ADVERTISE_HOST",
        "GRPC_PORT",
        "GRPC_TOKEN_FILE",
        "TWILIO_AUTH_TOKEN_FILE",
        "GRACEFUL_TIMEOUT_S",
        "EDGE_PORT",
    } <= variables_read("edge")
    assert {
        "WORKER_NAME",
        "WORKER_METRICS_PORT",
        "SHUTDOWN_GRACE_S",
        "GRPC_TOKEN_FILE",
        "BOTPRESS_ENCRYPTION_KEY_FILE",
        "BOTPRESS_CHAT_URL",
    } <= variables_read("worker")


# =============================================================================================
# Kubernetes (rendered by tests/kustomize.py)
# =============================================================================================
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
COMPONENTS = sorted(
    p for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").exists()
)


def _overlay_id(path: Path) -> str:
    return path.name


def test_overlays_and_components_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"example", "dev"}
    used: set[Path] = set()
    for overlay in OVERLAYS:
        for entry in kustomization(overlay).get("components", []):
            used.add((overlay / entry).resolve())
    unused = [c.name for c in COMPONENTS if c.resolve() not in used]
    assert not unused, f"components no overlay renders (so nothing validates them): {unused}"


@pytest.mark.parametrize("overlay", [K8S / "base", *OVERLAYS], ids=lambda p: p.name)
def test_renderer_agrees_with_kustomize(overlay: Path) -> None:
    command = real_kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl installed; the test's own renderer is used")
    try:
        out = subprocess.run(
            [*command, str(overlay)], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{command[0]} unusable here: {exc}")
    assert out.returncode == 0, out.stderr
    theirs = by_key([d for d in yaml.safe_load_all(out.stdout) if d])
    ours = by_key(render(overlay))
    assert sorted(theirs) == sorted(ours)
    for key, doc in ours.items():
        assert doc == theirs[key], f"{overlay.name}: {key} differs from {command[0]}'s rendering"


def _is_keda(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].startswith("keda.sh/")


@pytest.mark.parametrize("overlay", [K8S / "base", *OVERLAYS], ids=lambda p: p.name)
def test_manifests_validate_strictly(overlay: Path) -> None:
    for doc in render(overlay):
        if _is_keda(doc):
            continue  # a CRD: structural checks in test_keda_scaled_object
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']} "
                    f"(k8s {version}): {path}: {exc.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{overlay.name}: {exc.message}")


def test_strict_validation_can_fail() -> None:
    """A misspelled field must not pass (without --strict it would)."""
    deployment = next(d for d in render(K8S / "base") if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --- the rendered objects, cross-checked -----------------------------------------------------
class Rendered:
    def __init__(self, overlay: Path) -> None:
        self.name = overlay.name
        self.docs = render(overlay)
        self.by_key = by_key(self.docs)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.by_key, f"{self.name}: no {kind}/{name}"
        return self.by_key[(kind, name)]

    def deployments_by_role(self) -> dict[str, dict[str, Any]]:
        out = {}
        for doc in self.of_kind("Deployment"):
            command = containers(doc)[0].get("command", [])
            if command[:2] == ["python", "-m"]:
                role = check_module_command(command)
                assert role not in out, f"{self.name}: two {role} Deployments"
                out[role] = doc
        return out

    def secret_value(self, name: str, key: str) -> str:
        secret = self.get("Secret", name)
        if key in secret.get("stringData", {}):
            return str(secret["stringData"][key])
        assert key in secret.get("data", {}), f"{self.name}: Secret {name} has no key {key}"
        return base64.b64decode(secret["data"][key]).decode()


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"container {container['name']} has no port named {port}"
    return int(named[port])


def effective_env(
    r: Rendered, deployment: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, str], dict[str, Any]]:
    """The container's environment as the kubelet would build it (downward API faked, secret
    files written under tmp_path), and the raw env entries by name."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env: dict[str, str] = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"unchecked envFrom {source}"
        env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    entries = {e["name"]: e for e in container.get("env", [])}
    secret_files = {}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert set(volume) - {"name"} <= {"emptyDir", "secret", "configMap"}
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                value = r.secret_value(volume["secret"]["secretName"], item["key"])
                secret_files[f"{mount['mountPath']}/{item['path']}"] = value
    for name, entry in entries.items():
        if "value" in entry:
            value = entry["value"]
            if name.endswith("_FILE"):
                assert value in secret_files, f"{name}={value} is no mounted secret file"
                file = tmp_path / name
                file.write_text(secret_files[value])
                value = str(file)
            env[name] = value
        else:
            ref = entry["valueFrom"]
            if "fieldRef" in ref:
                field = ref["fieldRef"]["fieldPath"]
                env[name] = {"status.podIP": FAKE_POD_IP, "metadata.name": "pod-abc12"}[field]
            elif "secretKeyRef" in ref:
                env[name] = r.secret_value(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            else:
                raise AssertionError(f"unchecked valueFrom {ref}")
    return env, entries


@pytest.fixture(params=OVERLAYS, ids=_overlay_id)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param)


def test_edge_and_worker_deployments(rendered: Rendered, tmp_path: Path) -> None:
    r = rendered
    roles = r.deployments_by_role()
    assert {"edge", "worker"} <= set(roles)
    for role in ("edge", "worker"):
        deployment = roles[role]
        assert _selects(deployment["spec"]["selector"], _pod_labels(deployment))
        env, entries = effective_env(r, deployment, tmp_path / role)
        # Every variable given is one the process reads, and together they start it.
        for name in entries:
            assert name in variables_read(role), f"{r.name}: {role} env {name} is read by nobody"
        settings = load_settings(role, env)
        container = containers(deployment)[0]
        pod = deployment["spec"]["template"]["spec"]
        grace = pod["terminationGracePeriodSeconds"]
        if role == "edge":
            assert entries["GRPC_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == (
                "status.podIP"
            )
            assert settings.grpc_advertise_host == FAKE_POD_IP
            assert settings.grpc_bind_host == "0.0.0.0"
            assert int_setting("edge", env, "GRPC_PORT") > 0, "fixed gRPC ports (NetworkPolicy)"
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            sleep_s = (
                int(pre_stop["command"][1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
            )
            assert grace > settings.graceful_timeout_s + sleep_s
            probes = {p: container[p]["httpGet"] for p in ("readinessProbe", "livenessProbe")}
            assert probes["readinessProbe"]["path"] == "/readyz"
            assert probes["livenessProbe"]["path"] == "/healthz"
            for probe in probes.values():
                assert _container_port(container, probe["port"]) == settings.port
        else:
            assert entries["WORKER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert settings.name == "pod-abc12"
            assert grace > settings.shutdown_grace_s
            assert container["livenessProbe"]["exec"]["command"] == [
                "python",
                "-m",
                "worker",
                "--check",
            ]
            readiness = container["readinessProbe"]["httpGet"]
            assert _container_port(container, readiness["port"]) == int_setting(
                "worker", env, "WORKER_METRICS_PORT"
            )
        assert env["GRPC_TOKEN_FILE"], "edge and workers need the shared GRPC_TOKEN"
    edge_env, _ = effective_env(r, roles["edge"], tmp_path / "e2")
    worker_env, _ = effective_env(r, roles["worker"], tmp_path / "w2")
    edge_token = load_settings("edge", edge_env).grpc_token.value
    assert edge_token and edge_token == load_settings("worker", worker_env).grpc_token.value


def test_configmap_variables_are_read(rendered: Rendered) -> None:
    for config_map in rendered.of_kind("ConfigMap"):
        unknown = set(config_map["data"]) - all_variables()
        assert not unknown, f"{rendered.name}: ConfigMap variables nobody reads: {unknown}"


def test_outbound_api_token_is_a_secret_file(rendered: Rendered, tmp_path: Path) -> None:
    """API_TOKEN reaches the edge as a mounted Secret file, like TWILIO_AUTH_TOKEN, never as
    config; the outbound settings in the ConfigMap are the code's defaults."""
    edge = rendered.deployments_by_role()["edge"]
    env, entries = effective_env(rendered, edge, tmp_path)
    assert "API_TOKEN" not in entries and "value" in entries["API_TOKEN_FILE"]
    for config_map in rendered.of_kind("ConfigMap"):
        assert "API_TOKEN" not in config_map["data"]
    token = Path(env["API_TOKEN_FILE"])
    assert not load_settings("edge", env).outbound.enabled  # the template's token is empty
    token.write_text("a-real-token")
    outbound = load_settings("edge", env).outbound
    assert outbound.enabled and outbound.api_token.value == "a-real-token"
    defaults = settings_defaults("edge")
    for name in ("OUTBOUND_AMD", "OUTBOUND_MAX_CPS", "TWILIO_API_BASE_URL", "VOICEMAIL_MESSAGE"):
        assert _same(env[name], defaults[name]), f"{rendered.name}: {name}={env[name]}"


def test_every_deployment_is_locked_down(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        where = f"{rendered.name}: {deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in containers(deployment):
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert sc.get("runAsNonRoot", True) is True, where
            assert sc.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault"
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir /tmp"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            assert "readinessProbe" in container and "livenessProbe" in container, where


def test_botsim_probes_answer(rendered: Rendered) -> None:
    botsim = rendered.deployments_by_role().get("botsim")
    if botsim is None:
        pytest.skip(f"{rendered.name} runs no botsim")
    container = containers(botsim)[0]
    command = container["command"]
    port = int(command[command.index("--port") + 1])
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert _container_port(container, get["port"]) == port
        assert botsim_get(get["path"]) == 200, f"botsim answers {get['path']} with an error"


def test_services_pdbs_and_ingress_point_at_real_pods(rendered: Rendered) -> None:
    r = rendered
    deployments = r.of_kind("Deployment")
    for service in r.of_kind("Service"):
        selected = [
            d
            for d in deployments
            if _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(d))
        ]
        assert len(selected) == 1, f"{r.name}: Service {service['metadata']['name']}"
        for port in service["spec"]["ports"]:
            _container_port(containers(selected[0])[0], port["targetPort"])
    roles = r.deployments_by_role()
    pdb_targets = set()
    for pdb in r.of_kind("PodDisruptionBudget"):
        selected = [d for d in deployments if _selects(pdb["spec"]["selector"], _pod_labels(d))]
        assert len(selected) == 1, f"{r.name}: PDB {pdb['metadata']['name']}"
        pdb_targets.add(selected[0]["metadata"]["name"])
    assert {roles["edge"]["metadata"]["name"], roles["worker"]["metadata"]["name"]} <= pdb_targets
    for ingress in r.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = r.get("Service", backend["name"])
                names = {p.get("name") for p in service["spec"]["ports"]}
                numbers = {p["port"] for p in service["spec"]["ports"]}
                assert (
                    backend["port"].get("name") in names or backend["port"].get("number") in numbers
                )
                assert "/twilio/".startswith(path["path"].rstrip("/") + "/") or path["path"] == "/"


def test_network_policy_opens_grpc_to_workers_only(rendered: Rendered, tmp_path: Path) -> None:
    r = rendered
    roles = r.deployments_by_role()
    edge, worker = roles["edge"], roles["worker"]
    env, _ = effective_env(r, edge, tmp_path)
    first = int_setting("edge", env, "GRPC_PORT")
    last = first + GRPC_PORT_SPAN - 1
    http_port = load_settings("edge", env).port
    policies = [
        p
        for p in r.of_kind("NetworkPolicy")
        if _selects(p["spec"]["podSelector"], _pod_labels(edge))
    ]
    assert policies, f"{r.name}: no NetworkPolicy selects the edge"
    grpc_rules, http_open = [], False
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            assert ports, f"{r.name}: a rule opening every edge port"
            for port in ports:
                lo, hi = port["port"], port.get("endPort", port["port"])
                if lo <= last and hi >= first:
                    grpc_rules.append((rule, lo, hi))
                if lo <= http_port <= hi:
                    http_open = True
    assert http_open, "the webhooks' HTTP port must stay open"
    assert grpc_rules, "the gRPC range must be open to workers"
    for rule, lo, hi in grpc_rules:
        assert (lo, hi) == (first, last), f"gRPC rule {lo}-{hi} != {first}-{last}"
        peers = rule.get("from")
        assert peers, "gRPC open to everyone"
        for peer in peers:
            assert set(peer) == {"podSelector"}, f"gRPC open beyond worker pods: {peer}"
            assert _selects(peer["podSelector"], _pod_labels(worker))
            for other in r.of_kind("Deployment"):
                if other is not worker:
                    assert not _selects(peer["podSelector"], _pod_labels(other))


def _redis_target(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    db = parts.path.lstrip("/") or "0"
    return f"{parts.hostname}:{parts.port or 6379}", str(parts.scheme == "rediss").lower(), db


KEDA_SPEC_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
KEDA_TRIGGER_FIELDS = {
    "type",
    "name",
    "metadata",
    "authenticationRef",
    "metricType",
    "useCachedMetrics",
}
KEDA_REDIS_STREAMS_METADATA = {
    "address",
    "host",
    "port",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def test_autoscaling(rendered: Rendered, tmp_path: Path) -> None:
    r = rendered
    worker = r.deployments_by_role()["worker"]
    scaled = r.of_kind("ScaledObject")
    hpas = r.of_kind("HorizontalPodAutoscaler")
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if hpas and scaled:
        pytest.fail(f"{r.name}: KEDA and a plain HPA both scale the workers")
    if not scaled:
        return
    env, _ = effective_env(r, worker, tmp_path)
    redis_address, tls, db = _redis_target(env["REDIS_URL"])
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert set(spec) <= KEDA_SPEC_FIELDS, set(spec) - KEDA_SPEC_FIELDS
        target = spec["scaleTargetRef"]
        assert target["name"] == worker["metadata"]["name"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        measures = set()
        for trigger in spec["triggers"]:
            assert set(trigger) <= KEDA_TRIGGER_FIELDS
            assert trigger["type"] == "redis-streams"
            meta = trigger["metadata"]
            assert set(meta) <= KEDA_REDIS_STREAMS_METADATA, set(meta) - KEDA_REDIS_STREAMS_METADATA
            assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata are strings"
            assert meta["stream"] == keys.TURN_STREAM
            assert meta["consumerGroup"] == keys.WORKER_GROUP
            # KEDA reads the same Redis the workers use.
            assert meta["address"] == redis_address, f"{meta['address']} != REDIS_URL's"
            assert meta.get("enableTLS", "false") == tls
            assert meta.get("databaseIndex", "0") == db
            counts = {k for k in ("lagCount", "pendingEntriesCount", "streamLength") if k in meta}
            assert len(counts) == 1, f"one measure per trigger (KEDA would ignore one): {counts}"
            for name in (*counts, "activationLagCount"):
                if name in meta:
                    assert meta[name].isdigit(), f"{name}={meta[name]!r}"
            if "lagCount" in meta:
                assert "activationLagCount" in meta
            measures |= counts
            if "authenticationRef" in trigger:
                auth = r.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
                for ref in auth["spec"]["secretTargetRef"]:
                    assert ref["parameter"] in {"password", "username"}
                    r.secret_value(ref["name"], ref["key"])
        # lagCount can wake workers from zero; pending entries follow the turns in flight.
        assert measures == {"lagCount", "pendingEntriesCount"}


def test_keda_component_defaults_match_the_dev_redis(tmp_path: Path) -> None:
    """components/keda's own address (used by any overlay that does not patch it) is the
    in-cluster Redis of components/dev-redis."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(K8S / "base")],
                "components": [str(K8S / "components" / c) for c in ("dev-redis", "keda")],
            }
        )
    )
    r = Rendered(tmp_path)
    assert r.of_kind("ScaledObject")
    test_autoscaling(r, tmp_path / "env")


def test_example_overlay_uses_managed_redis() -> None:
    r = Rendered(K8S / "overlays" / "example")
    for doc in r.of_kind("Deployment"):
        for container in containers(doc):
            assert not container["image"].startswith("redis"), "production uses a managed Redis"
    assert r.of_kind("ScaledObject"), "the example overlay scales with KEDA"
    assert r.of_kind("Ingress")


# =============================================================================================
# Dockerfile and its healthcheck
# =============================================================================================
def dockerfile_instructions() -> list[tuple[str, str]]:
    return deploy_formats.dockerfile_instructions(DOCKERFILE)


def _final_stage() -> list[tuple[str, str]]:
    return deploy_formats.final_stage(dockerfile_instructions())


def dockerfile_env() -> dict[str, str]:
    return deploy_formats.stage_env(_final_stage())


def healthcheck_path() -> str:
    for keyword, rest in _final_stage():
        if keyword == "COPY" and rest.split()[0] == str(HEALTHCHECK_SCRIPT.relative_to(ROOT)):
            return rest.split()[1]
    raise AssertionError("the Dockerfile does not copy deploy/docker/healthcheck.py")


def _dockerignored(relpath: str) -> bool:
    return deploy_formats.dockerignored(ROOT / ".dockerignore", relpath)


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()[0]
        for keyword, rest in instructions
        if keyword == "FROM"
    ]
    assert len(froms) >= 2, "multi-stage"
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", image) for image in froms), froms
    final = _final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "a numeric non-root USER"
    # Every COPY from the build context exists and is not excluded by .dockerignore.
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not _dockerignored(source), f"COPY {source} is excluded by .dockerignore"
    # Every first-party package the three roles import is copied.
    copied = {rest.split()[0] for keyword, rest in instructions if keyword == "COPY"}
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    for role in ROLES:
        for source in (ROOT / role).rglob("*.py"):
            for match in re.finditer(r"^\s*(?:from|import) (\w+)", source.read_text(), re.M):
                if match.group(1) in first_party:
                    assert match.group(1) in copied, f"{source} imports uncopied {match.group(1)}"
    cmd = [exec_form(rest) for keyword, rest in final if keyword == "CMD"][-1]
    check_module_command(cmd)
    assert not [k for k, _ in final if k == "ENTRYPOINT"], "the command picks the role"
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert health, "HEALTHCHECK"
    assert exec_form(health[0].split("CMD", 1)[1].strip()) == ["python", healthcheck_path()]
    exposed = " ".join(rest for keyword, rest in final if keyword == "EXPOSE").split()
    edge = load_settings("edge", MINIMAL_ENV["edge"])
    first = int(compose()["services"]["edge"]["environment"]["GRPC_PORT"])
    assert str(edge.port) in exposed
    assert settings_defaults("worker")["WORKER_METRICS_PORT"] in exposed
    assert str(BOTSIM_PORT) in exposed
    assert f"{first}-{first + GRPC_PORT_SPAN - 1}" in exposed
    assert dockerfile_env().get("GRPC_BIND_HOST") == "0.0.0.0", "containers take gRPC replies"


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (".git", ".venv", "tests", ".env", "deploy/k8s"):
        assert _dockerignored(path), path
    for path in ("pyproject.toml", "edge/app.py", "deploy/docker/healthcheck.py"):
        assert not _dockerignored(path), path


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vb_healthcheck", HEALTHCHECK_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def botsim_get(path: str) -> int:
    """Status of a GET against botsim's real ASGI app, in process."""
    from falcon import testing

    from botsim.app import create_app
    from botsim.config import BotsimConfig

    return testing.TestClient(create_app(BotsimConfig())).simulate_get(path).status_code


def test_healthcheck_probes_every_role() -> None:
    hc = _healthcheck_module()
    edge = load_settings("edge", MINIMAL_ENV["edge"])
    assert hc.probe_for(["python", "-m", "edge"], {}) == f"http://127.0.0.1:{edge.port}/readyz"
    assert hc.probe_for(["python", "-m", "edge"], {"EDGE_PORT": "9000"}).endswith(":9000/readyz")
    assert hc.probe_for(["/usr/bin/docker-init", "--", "python", "-m", "worker"], {})[1:] == [
        "-m",
        "worker",
        "--check",
    ]
    assert hc.probe_for(["python", "-m", "botsim", "--port", "3101"], {}).startswith(
        "http://127.0.0.1:3101/"
    )
    botsim_url = hc.probe_for(["python", "-m", "botsim"], {})
    assert botsim_url.startswith(f"http://127.0.0.1:{BOTSIM_PORT}/")
    assert botsim_get(urlsplit(botsim_url).path) == 200
    with pytest.raises(ValueError):
        hc.probe_for(["python", "-m", "nothing"], {})
    assert hc.EDGE_DEFAULT_PORT == edge.port
    # The endpoints and flag it probes exist in the code.
    assert '"/readyz"' in (ROOT / "edge" / "app.py").read_text()
    assert '"--check"' in (ROOT / "worker" / "__main__.py").read_text()


# =============================================================================================
# docker-compose.yml and .env.example
# =============================================================================================
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: str, dot_env: Mapping[str, str]) -> dict[str, str]:
    """A container's environment: image ENV < env_file (.env) < environment (interpolated)."""
    spec = compose()["services"][service]
    env = {k: v for k, v in dockerfile_env().items() if k not in ("PATH",)}
    for entry in spec.get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        assert path == ".env", "the services read .env"
        env.update(dot_env)
    environment = spec.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping"
    for name, value in environment.items():
        env[name] = interpolate(str(value), dot_env)
    return env


def _service_role(spec: dict[str, Any]) -> str | None:
    command = spec.get("command")
    if isinstance(command, list) and command[:2] == ["python", "-m"]:
        return check_module_command(command)
    return None


def test_compose_validates_against_compose_spec(tmp_path: Path) -> None:
    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    result = check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = compose()
    broken["services"]["worker"]["stop_grace_periodd"] = "30s"
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    assert check(bad).returncode != 0, "the schema check must catch a misspelled key"


def test_compose_services_start_and_scale() -> None:
    services = compose()["services"]
    assert {"redis", "edge", "worker", "botsim"} <= set(services)
    roles = {name: _service_role(spec) for name, spec in services.items()}
    assert {r for r in roles.values() if r} == set(ROLES)
    for name, spec in services.items():
        assert "container_name" not in spec, f"{name}: a fixed container name blocks --scale"
        health = spec.get("healthcheck")
        assert health and health.get("test"), f"{name}: no healthcheck"
        if roles[name]:
            assert health["test"] == ["CMD", "python", healthcheck_path()], name
            assert spec.get("image") == services["edge"]["image"], "one image for every role"
        for dep, cond in (spec.get("depends_on") or {}).items():
            assert cond["condition"] == "service_healthy", f"{name} -> {dep}"
            assert services[dep].get("healthcheck"), f"{dep} has no healthcheck to wait on"
    assert services["redis"]["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert re.match(r"redis:(7|8)", services["redis"]["image"]), "Redis 7+ (KEDA lagCount)"
    worker = services["worker"]
    assert "ports" not in worker, "host ports on workers break --scale"
    assert set(worker["depends_on"]) >= {"redis", "botsim"}
    assert "redis" in services["edge"]["depends_on"]


def test_compose_environment_starts_every_process() -> None:
    dot_env, _ = dotenv(ENV_EXAMPLE)
    services = compose()["services"]
    envs = {}
    for name, spec in services.items():
        role = _service_role(spec)
        if role not in SETTINGS:
            continue
        for var in spec.get("environment", {}):
            assert var in variables_read(role), f"compose {name}: {var} is read by nobody"
        env = compose_env(name, dot_env)
        envs[role] = (env, load_settings(role, env))
    edge_env, edge = envs["edge"]
    worker_env, worker = envs["worker"]
    assert edge.grpc_token.value and edge.grpc_token.value == worker.grpc_token.value
    # Each edge advertises an address workers can reach: its container IP on the compose network.
    assert edge.grpc_bind_host == "0.0.0.0"
    assert edge.grpc_advertise_host == FAKE_CONTAINER_IP
    assert not worker_env.get("WORKER_NAME"), "WORKER_NAME must stay unset (--scale)"
    # ... even when .env sets them: every replica needs its own name, each edge its own address.
    stray = {**dot_env, "WORKER_NAME": "w", "GRPC_ADVERTISE_HOST": "10.9.9.9"}
    assert load_settings("worker", compose_env("worker", stray)).name != "w"
    assert load_settings("edge", compose_env("edge", stray)).grpc_advertise_host == (
        FAKE_CONTAINER_IP
    )
    # Redis and the bot are the compose services.
    for url in (edge.redis_url, worker.redis_url):
        assert urlsplit(url).hostname == "redis" and (urlsplit(url).port or 6379) == 6379
    chat = urlsplit(worker.chat_url)
    assert chat.hostname == "botsim"
    botsim_cmd = services["botsim"]["command"]
    assert chat.port == int(botsim_cmd[botsim_cmd.index("--port") + 1]) == BOTSIM_PORT
    assert botsim_cmd[botsim_cmd.index("--host") + 1] == "0.0.0.0"
    # Real Botpress: BOTPRESS_CHAT_URL present but empty in .env, BOTPRESS_WEBHOOK_ID set.
    real = compose_env("worker", {**dot_env, "BOTPRESS_CHAT_URL": "", "BOTPRESS_WEBHOOK_ID": "w1"})
    assert load_settings("worker", real).chat_url.endswith("/w1")
    # Ports: the host port is the edge's, gRPC range and metrics as the code binds them.
    edge_spec, worker_spec = services["edge"], services["worker"]
    published = [interpolate(p, dot_env) for p in edge_spec["ports"]]
    assert published == [f"{edge.port}:{edge.port}"]
    first = int_setting("edge", edge_env, "GRPC_PORT")
    assert first > 0
    assert [str(p) for p in edge_spec["expose"]] == [f"{first}-{first + GRPC_PORT_SPAN - 1}"]
    assert [str(p) for p in worker_spec["expose"]] == [
        str(int_setting("worker", worker_env, "WORKER_METRICS_PORT"))
    ]
    # Stopping waits longer than the processes' own graceful shutdown.
    assert _seconds(edge_spec["stop_grace_period"]) > edge.graceful_timeout_s
    assert _seconds(worker_spec["stop_grace_period"]) > worker.shutdown_grace_s


def test_compose_refuses_to_start_without_required_variables() -> None:
    edge_env = compose()["services"]["edge"]["environment"]
    worker_env = compose()["services"]["worker"]["environment"]
    for name in required_vars("edge") | {"GRPC_TOKEN"}:
        assert str(edge_env.get(name, "")).startswith(f"${{{name}:?"), name
    assert str(worker_env["GRPC_TOKEN"]).startswith("${GRPC_TOKEN:?")
    with pytest.raises(KeyError):
        compose_env("edge", {})


def _seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert total > 0, duration
    return total


def test_env_example_lists_every_variable() -> None:
    active, commented = dotenv(ENV_EXAMPLE)
    listed = set(active) | set(commented)
    assert not set(active) & set(commented), "a variable both set and commented"
    read = {n for n in all_variables() if not n.endswith("_FILE")}
    assert read - listed == set(), f"missing from .env.example: {sorted(read - listed)}"
    assert listed - all_variables() == set(), f"read by nobody: {sorted(listed - all_variables())}"
    # A commented line shows what the process gets when it stays commented under compose.
    for role, service in (("edge", "edge"), ("worker", "worker")):
        env = compose_env(service, active)
        defaults = settings_defaults(role)
        for name, shown in commented.items():
            if not shown or name not in variables_read(role):
                continue
            expected = env.get(name) or defaults.get(name)
            if expected is not None:
                assert _same(shown, expected), f".env.example: {name}={shown}, really {expected}"


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


# =============================================================================================
# Grafana dashboard and the guide
# =============================================================================================
# The metrics the issue asks the dashboard to show.
REQUIRED_METRICS = {
    "voicebridge_turn_latency_seconds",
    "voicebridge_deadline_misses_total",
    "voicebridge_reprompts_total",
    "voicebridge_turns_in_flight",
    "voicebridge_stream_lag",
    "voicebridge_bot_errors_total",
    "voicebridge_webhooks_total",
}
METRIC_SOURCES = [ROOT / "edge" / "metrics.py", ROOT / "worker" / "metrics.py"]
ALWAYS_LABELS = {"instance", "job", "pod", "namespace"}


def defined_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (Counter/Gauge/Histogram, label names), from the metrics modules."""
    out: dict[str, tuple[str, set[str]]] = {}
    for path in METRIC_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("Counter", "Gauge", "Histogram", "Summary")
            ):
                name = ast.literal_eval(node.args[0])
                labels: list[str] = []
                if len(node.args) > 2:
                    labels = ast.literal_eval(node.args[2])
                for kw in node.keywords:
                    if kw.arg == "labelnames":
                        labels = ast.literal_eval(kw.value)
                if node.func.id == "Counter" and not name.endswith("_total"):
                    name += "_total"  # prometheus_client exposes counters as <name>_total
                out[name] = (node.func.id, set(labels))
    return out


def _dashboard_exprs() -> list[str]:
    dashboards = sorted(DASHBOARD_DIR.glob("*.json"))
    assert dashboards, "no Grafana dashboard"
    exprs = []
    for path in dashboards:
        data = json.loads(path.read_text())
        assert data.get("uid") and data.get("title") and data.get("panels")
        panels = list(data["panels"])
        for panel in list(panels):
            panels += panel.get("panels", [])
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"panel {panel['title']} shows nothing"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                exprs.append(target["expr"])
    return exprs


def test_dashboard_uses_the_code_s_metrics() -> None:
    metrics = defined_metrics()
    assert REQUIRED_METRICS <= set(metrics), f"not in code: {REQUIRED_METRICS - set(metrics)}"
    used = set()
    for expr in _dashboard_exprs():
        assert expr.count("(") == expr.count(")"), expr
        names = set(re.findall(r"\bvoicebridge_\w+", expr))
        assert names, f"no voicebridge metric in {expr}"
        labels: set[str] = set()
        for name in names:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name and base in metrics:
                assert metrics[base][0] == "Histogram", f"{name}: {base} is no histogram"
                labels |= {"le"}
            else:
                base = name
            assert base in metrics, f"{expr}: {name} is not defined in the code"
            used.add(base)
            labels |= metrics[base][1]
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert label in labels | ALWAYS_LABELS, f"{expr}: no label {label!r}"
        for selector in re.findall(r"\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*=~?", selector):
                assert label in labels | ALWAYS_LABELS, f"{expr}: no label {label!r}"
    assert REQUIRED_METRICS <= used, f"metrics without a panel: {REQUIRED_METRICS - used}"


def test_deploy_guide_paths_exist() -> None:
    text = DEPLOY_DOC.read_text()
    for path in set(
        re.findall(r"(?<![\w/])((?:deploy/(?:docker|k8s|grafana)|docs)/[\w./-]*\w)", text)
    ):
        assert (ROOT / path).exists(), f"docs/deploy.md names missing {path}"
    for needle in (
        "cp .env.example .env",
        "--scale worker=",
        "/twilio/voice",
        "/twilio/status",
        "Capacity figures",
        "make bench",
    ):
        assert needle in text, needle
