"""scripts/k8s: valid against Kubernetes' own schemas (kubernetes-validate ships them, so no
cluster or network is needed), and consistent with each other and with radixrt's flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from radixrt.launch_server import build_parser as server_parser
from radixrt.router.config import build_parser as router_parser
from radixrt.router.config import config_from_args

K8S = Path(__file__).resolve().parents[2] / "scripts" / "k8s"
# A recent release most clusters run, and the newest schema the installed package knows.
VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
REPLICA_FILES = ["replicas-cpu.yaml", "replicas-gpu.yaml"]


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def only(name: str, kind: str) -> dict[str, Any]:
    found = [d for d in docs(name) if d["kind"] == kind]
    assert len(found) == 1, f"{name}: expected one {kind}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def flag(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"{name}="))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_manifests_validate_strictly(name: str, version: str) -> None:
    assert docs(name)
    for d in docs(name):
        # strict: unknown fields (typos) are errors too.
        kubernetes_validate.validate(d, version, strict=True)


def test_validation_catches_mistakes() -> None:
    bad = only("replicas-cpu.yaml", "StatefulSet")
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", REPLICA_FILES)
def test_router_lists_every_replica(name: str) -> None:
    sts = only(name, "StatefulSet")
    headless = next(d for d in docs("services.yaml") if d["metadata"]["name"] == "radixrt")
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    port = headless["spec"]["ports"][0]["port"]
    router = container(only("router.yaml", "Deployment"))
    args = router_parser().parse_args(router["args"])
    config = config_from_args(args)  # the router accepts its flags
    expected = tuple(f"http://{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:{port}"
                     for i in range(sts["spec"]["replicas"]))
    assert config.worker_urls == expected


@pytest.mark.parametrize("name", [*REPLICA_FILES, "router.yaml"])
def test_probes_ports_resources_and_scraping(name: str) -> None:
    (workload,) = [d for d in docs(name) if d["kind"] in ("StatefulSet", "Deployment")]
    template = workload["spec"]["template"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= \
        template["metadata"]["labels"].items()
    c = container(workload)
    port = c["ports"][0]
    assert port["name"] == "http" and int(flag(c["args"], "--port")) == port["containerPort"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert "livenessProbe" in c
    notes = template["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == port["containerPort"]
    assert notes["prometheus.io/path"] == "/metrics"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    if name == "replicas-gpu.yaml":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    if name != "router.yaml":  # the server accepts its flags
        args = server_parser().parse_args(c["args"])
        assert args.host == "0.0.0.0" and args.dp_size == 1


def test_services_select_their_pods() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for name in ["router.yaml", *REPLICA_FILES] for d in docs(name)}
    for svc in docs("services.yaml"):
        matched = [n for n, labels in pods.items() if svc["spec"]["selector"].items()
                   <= labels.items()]
        assert matched, f"service {svc['metadata']['name']} selects no pods"
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
