"""The Helm chart: rendered by Helm's engine, every manifest valid against the Kubernetes schemas,
and wired so the daemons accept what it gives them (their own config parsers read it)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from damselfly.dfdaemon.cli import engine_config, load_daemon_config, proxy_settings
from damselfly.supernode.cli import load_config as load_supernode_config
from tests.unit.deploy import chartkit as ck

pytestmark = pytest.mark.usefixtures("tools")

# Value sets a user is likely to install with; each must render valid manifests.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "three-supernodes-no-pvc": {
        "supernode": {"replicas": 3, "persistence": {"enabled": False}, "verbose": True},
    },
    "hostport": {"dfdaemon": {"hostNetwork": False}},
    "external-supernodes": {
        "dfdaemon": {
            "supernodes": ["10.0.0.1:8002=2", "10.0.0.2"],
            "ratelimit": "50M",
            "extraDfgetFlags": ["-f", "Expires&Signature", "--totallimit", "200M"],
            "homeHostPath": "/var/lib/damselfly",
        },
        "supernode": {"persistence": {"storageClassName": "fast"}, "extraArgs": ["--verbose"]},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "no-containerd": {"containerd": {"enabled": False}},
    "supernode-only": {"dfdaemon": {"enabled": False}},
    "private-registry": {
        "containerd": {
            "registry": "registry.example.com:5000",
            "server": "https://registry.example.com:5000",
        },
        "dfdaemon": {"registryMirror": {"remote": "https://registry.example.com:5000"}},
        "supernode": {"podAnnotations": {"prometheus.io/scrape": "true"}},
    },
}
# The chart's kubeVersion floor and the newest schemas the validator ships.
KUBE_VERSIONS = ("1.25", "1.37")


@pytest.fixture(scope="module")
def tools() -> None:
    ck.require_tools()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_manifest_is_valid_kubernetes(variant: str) -> None:
    manifests = ck.render(VARIANTS[variant])
    assert manifests
    for version in KUBE_VERSIONS:
        for m in manifests:
            ck.validate(m, version)


def test_default_render_has_the_expected_objects() -> None:
    kinds = sorted((m.kind, m.name) for m in ck.render())
    assert kinds == [
        ("ConfigMap", "df-damselfly-dfdaemon"),
        ("DaemonSet", "df-damselfly-dfdaemon"),
        ("Service", "df-damselfly-supernode"),
        ("Service", "df-damselfly-supernode-headless"),
        ("StatefulSet", "df-damselfly-supernode"),
    ]
    kinds3 = {m.kind for m in ck.render({"supernode": {"replicas": 3}})}
    assert "PodDisruptionBudget" in kinds3


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The schema check is real: a wrong type in a value the chart passes through is caught."""
    manifests = ck.render({"supernode": {"podAnnotations": {"scrape": 1}}})
    sts = next(m for m in manifests if m.kind == "StatefulSet")
    with pytest.raises(AssertionError, match=r"StatefulSet/df-damselfly-supernode is invalid"):
        ck.validate(sts, "1.30")
    unknown = ck.Manifest("x", {**sts.body, "spec": {**sts.body["spec"], "replica": 2}})
    with pytest.raises(AssertionError, match="invalid"):
        ck.validate(unknown, "1.30")


def test_helm_lint_strict_is_clean() -> None:
    import helm_python

    report = helm_python.lint(ck.CHART, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"supernode": {"replicas": 0}}, "supernode.replicas must be at least 1"),
        ({"containerd": {"registry": "docker.io/evil; rm -rf /"}}, "is not a registry host"),
        ({"containerd": {"server": "ftp://x"}}, "containerd.server"),
        ({"containerd": {"certsDir": "relative/dir"}}, "must be an absolute path"),
        ({"dfdaemon": {"extraDfgetFlags": ["--port", "1"]}}, "must not set --port"),
        ({"dfdaemon": {"peerPort": 65001}}, "must differ"),
    ],
)
def test_bad_values_fail_the_render_with_a_message(values: dict[str, Any], message: str) -> None:
    assert message in ck.render_error(values)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_supernode_statefulset_behind_headless_service() -> None:
    manifests = ck.render({"supernode": {"replicas": 3}})
    sts = ck.one(manifests, "StatefulSet", "-supernode")
    headless = ck.one(manifests, "Service", "-supernode-headless")
    client = ck.one(manifests, "Service", "-supernode")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert _selects(sts["spec"]["selector"]["matchLabels"], pod_labels)
    for svc in (headless, client):
        assert _selects(svc["spec"]["selector"], pod_labels)
    pdb = ck.one(manifests, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    pod = sts["spec"]["template"]["spec"]
    c = ck.container(pod, "supernode")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"api": 8002, "pieces": 8001}
    assert {p["targetPort"] for p in headless["spec"]["ports"]} <= set(ports)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/_ping", "port": "api"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the CDN cache is on the claim, mounted where --home-dir points
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "home"
    assert {"name": "home", "mountPath": "/var/lib/damselfly"} in c["volumeMounts"]


def test_supernode_accepts_its_rendered_arguments(tmp_path: Path) -> None:
    sts = ck.one(ck.render({"supernode": {"verbose": True}}), "StatefulSet")
    c = ck.container(sts["spec"]["template"]["spec"], "supernode")
    assert c["command"] == ["supernode"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # Kubernetes expands $(POD_IP) in args; the home is a temp dir here
    args = [a.replace("$(POD_IP)", "10.1.2.3") for a in c["args"]]
    args = [f"--home-dir={tmp_path}" if a.startswith("--home-dir=") else a for a in args]
    cfg = load_supernode_config(args)
    assert (cfg.port, cfg.download_port, cfg.advertise_ip) == (8002, 8001, "10.1.2.3")
    assert cfg.verbose is True


def _dfdaemon_yml(manifests: list[ck.Manifest]) -> str:
    return str(ck.one(manifests, "ConfigMap", "-dfdaemon")["data"]["dfdaemon.yml"])


def test_dfdaemon_accepts_its_rendered_config_and_lists_every_supernode(tmp_path: Path) -> None:
    manifests = ck.render({"supernode": {"replicas": 3}, "dfdaemon": {"ratelimit": "20M"}})
    path = tmp_path / "dfdaemon.yml"
    path.write_text(_dfdaemon_yml(manifests))
    cfg = load_daemon_config(str(path))
    assert cfg.port == 65001
    assert cfg.nodes == [
        f"df-damselfly-supernode-{i}.df-damselfly-supernode-headless.damselfly.svc.cluster.local:8002"
        for i in range(3)
    ]
    assert cfg.ratelimit == 20 * 1024 * 1024
    engine = engine_config(cfg, str(tmp_path / "home"))
    assert engine.port == 65002  # the peer port the DaemonSet declares
    settings = proxy_settings(cfg, "127.0.0.1")
    assert settings.defaults.nodes == tuple(cfg.nodes)


def test_dfdaemon_external_supernodes_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "dfdaemon.yml"
    path.write_text(_dfdaemon_yml(ck.render(VARIANTS["external-supernodes"])))
    cfg = load_daemon_config(str(path))
    assert cfg.nodes == ["10.0.0.1:8002=2", "10.0.0.2"]
    assert proxy_settings(cfg).defaults.filter == ("Expires", "Signature")


@pytest.mark.parametrize("host_network", [True, False])
def test_dfdaemon_daemonset_ports_probes_and_network(host_network: bool) -> None:
    manifests = ck.render({"dfdaemon": {"hostNetwork": host_network}})
    ds = ck.one(manifests, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert _selects(
        ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"]
    )
    c = ck.container(pod, "dfdaemon")
    ports = {p["name"]: p for p in c["ports"]}
    assert {p["containerPort"] for p in ports.values()} == {65001, 65002}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["tcpSocket"]["port"] == "proxy"
    if host_network:
        assert pod["hostNetwork"] is True
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert "--listen=127.0.0.1" in c["args"]
        assert c["readinessProbe"]["tcpSocket"]["host"] == "127.0.0.1"
        assert all("hostPort" not in p for p in ports.values())
    else:
        assert "hostNetwork" not in pod
        assert {p["hostPort"] for p in ports.values()} == {65001, 65002}
        assert not any(a.startswith("--listen") for a in c["args"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/etc/dragonfly"] == "config"
    assert "--config=/etc/dragonfly/dfdaemon.yml" in c["args"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def _init_script(manifests: list[ck.Manifest]) -> tuple[str, dict[str, Any], str]:
    ds = ck.one(manifests, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    init = ck.container(pod, "containerd-hosts", init=True)
    hosts = str(ck.one(manifests, "ConfigMap", "-dfdaemon")["data"]["hosts.toml"])
    vol = next(v for v in pod["volumes"] if v["name"] == "containerd-certs")
    assert {"name": "containerd-certs", "mountPath": "/host/certs.d"} in init["volumeMounts"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["command"] == ["/bin/sh", "-ec"]
    return init["args"][0], {**init, "hostPath": vol["hostPath"]}, hosts


def _run_init(script: str, host_ip: str, tmp_path: Path, hosts_toml: str) -> Path:
    """Run the init container's script with its two mounts moved under ``tmp_path``."""
    config, certs = tmp_path / "config", tmp_path / "certs.d"
    config.mkdir(exist_ok=True)
    certs.mkdir(exist_ok=True)
    (config / "hosts.toml").write_text(hosts_toml)
    script = script.replace("/host/certs.d", str(certs)).replace("/config/", f"{config}/")
    subprocess.run(
        ["/bin/sh", "-ec", script],
        env={"MIRROR_HOST": host_ip, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certs


@pytest.mark.parametrize(
    ("host_network", "node_ip", "mirror"),
    [
        (True, "127.0.0.1", "http://127.0.0.1:65001"),
        (False, "10.0.0.7", "http://10.0.0.7:65001"),
        (False, "fd00::7", "http://[fd00::7]:65001"),
    ],
)
def test_containerd_hosts_toml_written_on_the_node(
    host_network: bool, node_ip: str, mirror: str, tmp_path: Path
) -> None:
    manifests = ck.render({"dfdaemon": {"hostNetwork": host_network}})
    script, init, hosts = _init_script(manifests)
    assert init["hostPath"] == {"path": "/etc/containerd/certs.d", "type": "DirectoryOrCreate"}
    env = init["env"][0]
    if host_network:
        assert env == {"name": "MIRROR_HOST", "value": "127.0.0.1"}
    else:
        assert env["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"

    certs = _run_init(script, node_ip, tmp_path, hosts)
    # an operator's own hosts.toml is kept aside once, then ours replaces it atomically
    theirs = 'server = "https://registry-1.docker.io"\n'
    (certs / "docker.io" / "hosts.toml").write_text(theirs)
    _run_init(script, node_ip, tmp_path, hosts)
    _run_init(script, node_ip, tmp_path, hosts)
    assert (certs / "docker.io" / "hosts.toml.before-damselfly").read_text() == theirs
    assert sorted(p.name for p in (certs / "docker.io").iterdir()) == [
        "hosts.toml",
        "hosts.toml.before-damselfly",
    ]
    written = tomllib.loads((certs / "docker.io" / "hosts.toml").read_text())
    assert written == {
        "server": "https://registry-1.docker.io",
        "host": {mirror: {"capabilities": ["pull", "resolve"]}},
    }


def test_containerd_wiring_for_a_private_registry(tmp_path: Path) -> None:
    manifests = ck.render(VARIANTS["private-registry"])
    script, _init, hosts = _init_script(manifests)
    certs = _run_init(script, "127.0.0.1", tmp_path, hosts)
    written = tomllib.loads((certs / "registry.example.com:5000" / "hosts.toml").read_text())
    assert written["server"] == "https://registry.example.com:5000"
    cfg = yaml.safe_load(_dfdaemon_yml(manifests))
    assert cfg["registry_mirror"]["remote"] == "https://registry.example.com:5000"


def test_no_containerd_means_no_host_path_and_no_root() -> None:
    ds = ck.one(ck.render({"containerd": {"enabled": False}}), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert all("hostPath" not in v for v in pod["volumes"])
    cm = ck.one(ck.render({"containerd": {"enabled": False}}), "ConfigMap")
    assert "hosts.toml" not in cm["data"]


def test_notes_tell_what_to_check() -> None:
    text = ck.notes({"supernode": {"replicas": 2}})
    assert "rollout status statefulset/df-damselfly-supernode" in text
    assert "df-damselfly-supernode-1.df-damselfly-supernode-headless" in text
    assert 'config_path = "/etc/containerd/certs.d"' in text
