"""The deployment files: Kubernetes manifests against the Kubernetes JSON schemas (strict, no
unknown fields), and the compose file, Dockerfile and manifests against the node's real CLI
and settings, so a renamed flag or setting breaks a test here and not a deployment.

Running them for real is deploy/test-compose.sh (podman); the manifests have not been run on
a Kubernetes cluster.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from cli.main import cli
from kvstore.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# The oldest Kubernetes still commonly run, and the newest the schema package knows.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
SETTING_ENV = {"KV_" + name.upper() for name in Settings.__dataclass_fields__}
NODE_PORT = 7000
NODE_UID = 10001


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for d in _by_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(docs) == 1, f"expected one {kind} {name or ''}, found {len(docs)}"
    return docs[0]


def _unparsed(ctx: click.Context) -> list[str]:
    # Click 8.2+ deprecates protected_args (Click 9 puts everything in args).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*getattr(ctx, "protected_args", []), *ctx.args]


def _parse_kv(argv: list[str]) -> tuple[click.Context, click.Context]:
    """Parse a `kv ...` command line with the real CLI (no callback runs); return the
    group's context and the innermost command's context."""
    assert argv[0] == "kv", argv
    top = cli.make_context("kv", list(argv[1:]), resilient_parsing=False)
    ctx = top
    group: Any = cli
    args = _unparsed(ctx)
    while isinstance(group, click.Group) and args:
        name, cmd, rest = group.resolve_command(ctx, args)
        assert cmd is not None, f"unknown command in {argv}"
        ctx = cmd.make_context(name, rest, parent=ctx)
        group = cmd
        args = _unparsed(ctx) if isinstance(cmd, click.Group) else []
    return top, ctx


def _node_start_settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    _, ctx = _parse_kv(argv)
    assert ctx.command.name == "start", argv
    params = dict(ctx.params)
    params.pop("config_path", None)
    params.pop("log_level", None)
    if not params.get("seeds"):
        params.pop("seeds", None)
    return load_settings(env=env or {}, overrides=params)


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,doc", _manifests(), ids=lambda x: x if isinstance(x, str) else "")
def test_k8s_manifest_matches_the_schema(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_schema_check_rejects_mistakes() -> None:
    sts = _one("StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files)


def _pod_labels() -> dict[str, str]:
    labels: dict[str, str] = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects_pods(selector: dict[str, str]) -> bool:
    labels = _pod_labels()
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_statefulset_shape() -> None:
    sts = _one("StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert _selects_pods(spec["selector"]["matchLabels"])
    headless = _one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert _selects_pods(headless["spec"]["selector"])
    assert {(p["port"], p["protocol"]) for p in headless["spec"]["ports"]} == {
        (NODE_PORT, "TCP"),
        (NODE_PORT, "UDP"),
    }
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert {(p["containerPort"], p["protocol"]) for p in c["ports"]} == {
        (NODE_PORT, "TCP"),
        (NODE_PORT, "UDP"),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, probe
    # the data volume is a PVC template, mounted where the node keeps its data
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KV_DATA_DIR"].startswith(mounts[claim["metadata"]["name"]] + "/")
    assert mounts["shm"] == env["KV_SNAPSHOT_DIR"] == "/dev/shm"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    # non-root, the image's user
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NODE_UID
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_statefulset_env_are_real_settings_and_addresses_are_stable_names() -> None:
    sts = _one("StatefulSet")
    name = sts["metadata"]["name"]
    svc = sts["spec"]["serviceName"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    unknown = {k for k in env if k.startswith("KV_")} - SETTING_ENV
    assert not unknown, f"not settings of kvstore/config.py: {unknown}"
    assert env["KV_NODE_ID"] == "$(POD_NAME)"
    assert env["KV_LISTEN"] == f"0.0.0.0:{NODE_PORT}"
    assert (
        env["KV_ADVERTISE"] == f"$(POD_NAME).{svc}.$(POD_NAMESPACE).svc.cluster.local:{NODE_PORT}"
    )
    seeds = env["KV_SEEDS"].split(",")
    assert seeds == [
        f"{name}-{i}.{svc}.$(POD_NAMESPACE).svc.cluster.local:{NODE_PORT}"
        for i in range(sts["spec"]["replicas"])
    ]
    # What a pod's node gets once Kubernetes has expanded $(VAR): valid settings.
    expanded = {
        k: v.replace("$(POD_NAME)", f"{name}-1").replace("$(POD_NAMESPACE)", "default")
        for k, v in env.items()
        if k.startswith("KV_") and v is not None
    }
    s = load_settings(env=expanded)
    assert s.node_id == f"{name}-1"
    assert s.advertise == f"{name}-1.{svc}.default.svc.cluster.local:{NODE_PORT}"
    assert len(s.seeds) == 3 and s.advertise in s.seeds


def test_statefulset_command_and_probes_parse_with_the_cli() -> None:
    (c,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["/bin/sh", "-c"]
    script = c["args"][0]
    m = re.search(r"^\s*exec (kv .*)$", script, re.M)
    assert m, script
    _, ctx = _parse_kv(shlex.split(m.group(1)))
    assert ctx.command.name == "start"
    config_mount = next(v for v in c["volumeMounts"] if v["name"] == "config")["mountPath"]
    assert ctx.params["config_path"].startswith(config_mount + "/")
    top, ctx = _parse_kv(c["readinessProbe"]["exec"]["command"])
    assert ctx.command.name == "ping"
    assert top.params["nodes"] == f"127.0.0.1:{NODE_PORT}"
    assert top.params["timeout"] < c["readinessProbe"]["timeoutSeconds"]


def test_configmap_toml_is_valid_settings(tmp_path: Path) -> None:
    cm = _one("ConfigMap", "kvstore-config")
    (c,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    script = c["args"][0]
    (fname,) = cm["data"].keys()
    assert f"/etc/kvstore/{fname}" in script
    path = tmp_path / fname
    path.write_text(cm["data"][fname])
    s = load_settings(toml_path=str(path), env={})
    assert (s.n_replicas, s.r, s.w) == (3, 2, 2)


def test_client_service_and_pdb() -> None:
    client = _one("Service", "kvstore")
    assert client["spec"].get("clusterIP") != "None"
    assert _selects_pods(client["spec"]["selector"])
    assert [(p["port"], p["protocol"]) for p in client["spec"]["ports"]] == [(NODE_PORT, "TCP")]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert _selects_pods(pdb["spec"]["selector"]["matchLabels"])


# ------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


NODES = ("kv1", "kv2", "kv3")


def test_compose_nodes_advertise_service_names_and_seed_each_other() -> None:
    services = _compose()["services"]
    for i, svc in enumerate(NODES):
        spec = services[svc]
        s = _node_start_settings(spec["command"])
        assert s.node_id == svc
        assert s.listen == f"0.0.0.0:{NODE_PORT}"
        assert s.advertise == f"{svc}:{NODE_PORT}", "advertise the service name, reachable by peers"
        # Seeded with every other node; the lowest address founds the ring on a first start.
        assert set(s.seeds) == {f"{o}:{NODE_PORT}" for o in NODES if o != svc}
        # data on a named volume, client port published on the host's loopback
        vol, key = spec["volumes"]
        name, path = vol.split(":")
        assert path == s.data_dir and name in _compose()["volumes"]
        # The cluster secret, which protected mode requires of a node listening on 0.0.0.0.
        assert key.endswith(":/run/secrets/kvstore.key:ro")
        assert spec["environment"]["KV_SECRET_FILE"] == "/run/secrets/kvstore.key"
        (port,) = spec["ports"]
        assert port == f"127.0.0.1:${{KV{i + 1}_PORT:-{7000 + i}}}:{NODE_PORT}/tcp"
        assert spec["init"] is True
        assert spec["healthcheck"]["test"][0] == "CMD"
        top, ctx = _parse_kv(spec["healthcheck"]["test"][1:])
        assert ctx.command.name == "ping" and top.params["nodes"] == f"127.0.0.1:{NODE_PORT}"


def test_compose_cli_service() -> None:
    kv = _compose()["services"]["kv"]
    assert kv["profiles"] == ["cli"]
    nodes = kv["environment"]["KV_NODES"].split(",")
    assert nodes == [f"{n}:{NODE_PORT}" for n in NODES]
    _parse_kv(kv["command"])
    assert set(kv["depends_on"]) == set(NODES)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_passes_docker_compose_config() -> None:
    r = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_the_node_as_non_root_with_a_health_check() -> None:
    ins = _dockerfile_instructions()
    words = [w for w, _ in ins]
    assert words[0] == "ARG" and ins[0][1].startswith("BASE=")
    assert [r for w, r in ins if w == "FROM"][-1] == "${BASE}"
    user = [r for w, r in ins if w == "USER"][-1]
    assert user == f"{NODE_UID}:{NODE_UID}"
    assert [r for w, r in ins if w == "STOPSIGNAL"] == ["SIGTERM"]
    assert [r for w, r in ins if w == "VOLUME"] == ['["/var/lib/kvstore"]']
    health = next(r for w, r in ins if w == "HEALTHCHECK")
    m = re.search(r"CMD (\[.*\])", health)
    assert m, health
    top, ctx = _parse_kv(yaml.safe_load(m.group(1)))
    assert ctx.command.name == "ping" and top.params["nodes"] == f"127.0.0.1:{NODE_PORT}"
    cmd = yaml.safe_load(next(r for w, r in reversed(ins) if w == "CMD"))
    _, ctx = _parse_kv(cmd)
    assert ctx.command.name == "start"
    env = " ".join(r for w, r in ins if w == "ENV")
    assert f"KV_LISTEN=0.0.0.0:{NODE_PORT}" in env
    assert "KV_DATA_DIR=/var/lib/kvstore" in env
