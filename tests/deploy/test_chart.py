"""Deployment artefacts, checked with the real tools: helm, kubernetes-validate, promtool.

The tools are installed by deploy/tools.sh (npm, apt, pip); a test is skipped, with the reason,
only when that installation cannot run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from autoannotator.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/autoannotator"
DEPLOY = ROOT / "deploy"
HELM = DEPLOY / ".tools/bin/helm"
FULL_VALUES = CHART / "ci/full-values.yaml"


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Paths of helm, kubernetes-validate and promtool, installed on first use."""
    if not (HELM.is_file() and shutil.which("promtool")):
        done = subprocess.run(["bash", str(DEPLOY / "tools.sh")], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"deploy/tools.sh could not install the deployment tools: {done.stderr[-500:]}")
    validate = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin/kubernetes-validate"
    return {"helm": str(HELM), "validate": str(validate), "promtool": shutil.which("promtool") or "promtool"}


def _template(tools: dict[str, str], *args: str) -> list[dict]:
    done = subprocess.run([tools["helm"], "template", "aa", str(CHART), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_deploy_check_script_passes() -> None:
    done = subprocess.run(["bash", str(DEPLOY / "check.sh")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deploy-check passed" in done.stdout


@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_rendered_pipeline_config_is_valid_for_the_services(tools: dict[str, str], values: list[str]) -> None:
    docs = _template(tools, *values)
    config_map = next(d for d in _kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-pipeline"))
    config = parse_config(yaml.safe_load(config_map["data"]["pipeline.yaml"]), "rendered pipeline.yaml")
    deployments = {d["metadata"]["name"] for d in _kinds(docs, "Deployment")}
    for spec in config.specialists:
        assert f"aa-autoannotator-specialist-{spec.name}" in deployments


def test_every_container_runs_non_root_with_read_only_root_fs_and_probes(tools: dict[str, str]) -> None:
    for deployment in _kinds(_template(tools, "-f", str(FULL_VALUES)), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/autoannotator"} <= mounts


def test_secrets_come_from_secret_refs_never_from_values(tools: dict[str, str]) -> None:
    docs = _template(tools, "-f", str(FULL_VALUES))
    assert not _kinds(docs, "Secret")
    reviewer = next(d for d in _kinds(docs, "Deployment") if d["metadata"]["name"].endswith("-reviewer"))
    env = {e["name"]: e for e in reviewer["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("AUTOANNOTATOR_LLM_API_KEY", "AUTOANNOTATOR_REVIEW_TOKEN", "AUTOANNOTATOR_KAFKA_SASL_PASSWORD"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name


def test_gpu_specialist_requests_gpus_and_uses_the_cuda_image(tools: dict[str, str]) -> None:
    docs = _template(tools, "-f", str(FULL_VALUES))
    gpu = next(d for d in _kinds(docs, "Deployment") if d["metadata"]["name"].endswith("specialist-minilm-a"))
    pod = gpu["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["image"].split("@")[0].endswith("-cuda")  # pinned by digest after "@"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_values_schema_rejects_an_unknown_key_naming_it(tools: dict[str, str]) -> None:
    done = subprocess.run([tools["helm"], "template", "aa", str(CHART), "--set", "voter.replicaz=2"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "replicaz" in done.stderr


def test_llm_mode_without_an_api_key_secret_fails_with_the_field_name(tools: dict[str, str]) -> None:
    done = subprocess.run([tools["helm"], "template", "aa", str(CHART), "--set", "reviewer.llm.apiKeySecret.name="],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "reviewer.llm.apiKeySecret.name" in done.stderr


def test_hpa_variant_validates(tools: dict[str, str]) -> None:
    render = subprocess.run([tools["helm"], "template", "aa", str(CHART), "--set", "autoscaling.hpa.enabled=true"],
                            capture_output=True, text=True, check=True)
    assert "kind: HorizontalPodAutoscaler" in render.stdout
    done = subprocess.run([tools["validate"], "--strict", "--quiet", "-"], input=render.stdout,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_prometheus_rule_is_the_checked_rule_file(tools: dict[str, str], tmp_path: Path) -> None:
    # Default thresholds: exactly the file promtool's unit tests cover.
    default = _kinds(_template(tools, "--set", "monitoring.prometheusRule.enabled=true"), "PrometheusRule")[0]
    assert default["spec"] == yaml.safe_load((DEPLOY / "prometheus/autoannotator.rules.yaml").read_text())
    # The full values change thresholds and add a group: still valid rules.
    rule = _kinds(_template(tools, "-f", str(FULL_VALUES)), "PrometheusRule")[0]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    done = subprocess.run([tools["promtool"], "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    exprs = {r.get("alert"): r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "autoannotator:consumer_lag:sum > 50000" in exprs["AutoAnnotatorConsumerLagGrowing"]
    assert exprs["AutoAnnotatorLLMSpendAboveBudget"].endswith("> 1.5")
    assert "AutoAnnotatorNoLabels" in exprs


def test_probes_grace_periods_and_scheduling_are_per_component(tools: dict[str, str]) -> None:
    pods = {d["metadata"]["name"].removeprefix("aa-autoannotator-"): d["spec"]["template"]["spec"]
            for d in _kinds(_template(tools, "-f", str(FULL_VALUES)), "Deployment")}
    for pod in pods.values():
        [container] = pod["containers"]
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    assert pods["trainer"]["terminationGracePeriodSeconds"] == 1800
    assert pods["reviewer"]["terminationGracePeriodSeconds"] == 600
    assert pods["specialist-minilm-a"]["terminationGracePeriodSeconds"] == 90
    assert pods["specialist-minilm-b"]["terminationGracePeriodSeconds"] == 60
    assert pods["specialist-minilm-a"]["runtimeClassName"] == "nvidia"
    assert pods["voter"]["priorityClassName"] == "autoannotator-high"
    [spread] = pods["voter"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "voter"
    image = pods["specialist-minilm-b"]["containers"][0]["image"]
    assert image.endswith("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")


def test_keda_scales_on_the_lag_of_the_group_each_specialist_joins(tools: dict[str, str]) -> None:
    from autoannotator.config import KafkaConfig
    from autoannotator.specialist.service import group_id

    docs = _template(tools, "-f", str(FULL_VALUES))
    kafka = KafkaConfig(topic_prefix="prod.aa.")
    [auth] = _kinds(docs, "TriggerAuthentication")
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"password", "ca"}
    for scaled in _kinds(docs, "ScaledObject"):
        name = scaled["spec"]["scaleTargetRef"]["name"].removeprefix("aa-autoannotator-specialist-")
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == group_id(name, kafka)
        assert trigger["metadata"]["topic"] == kafka.topic("texts")
        assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert scaled["spec"]["fallback"] == {"failureThreshold": 5, "replicas": 3}
        assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"]


def test_seed_job_adds_each_artifact_only_to_an_empty_store(tools: dict[str, str]) -> None:
    [job] = _kinds(_template(tools, "-f", str(FULL_VALUES)), "Job")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    steps = job["spec"]["template"]["spec"]["initContainers"]
    assert [c["args"][c["args"].index("--name") + 1] for c in steps] == ["minilm-a", "minilm-b", "minilm-c"]
    for container in steps:
        assert container["args"][:2] == ["models", "add"] and "--if-empty" in container["args"]
        assert container["args"][-1].startswith("s3://models-bucket/artifacts/")
        assert container["envFrom"] == [{"secretRef": {"name": "model-store-s3"}}]


def test_helm_test_pod_checks_every_services_readyz(tools: dict[str, str]) -> None:
    docs = _template(tools, "-f", str(FULL_VALUES))
    [pod] = [d for d in _kinds(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    args = pod["spec"]["containers"][0]["args"]
    assert "/readyz" in args[0]
    assert set(args[1:]) == {"voter", "reviewer", "trainer", "specialist-minilm-a", "specialist-minilm-b",
                             "specialist-minilm-c"}


def test_dashboard_config_map_carries_the_sidecar_label_and_the_dashboard(tools: dict[str, str]) -> None:
    docs = _template(tools, "-f", str(FULL_VALUES))
    board = next(d for d in _kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((DEPLOY / "grafana/autoannotator.json").read_text())
    assert json.loads(board["data"]["autoannotator.json"]) == shipped


def test_dashboard_covers_the_required_views() -> None:
    exprs = " ".join(
        t["expr"] for p in json.loads((DEPLOY / "grafana/autoannotator.json").read_text())["panels"]
        for t in p.get("targets", [])
    )
    for metric in ("records_in_total", "voter_decisions_total", "llm_requests_total", "llm_tokens_total",
                   "llm_cost_usd_total", "batch_seconds_bucket", "specialist_model_info", "trainer_pool_size",
                   "consumer_lag", "record_age_seconds_bucket", "llm_budget_limit_usd", "llm_spend_total_usd",
                   "trainer_heldout_accuracy", "review_queue_items", "llm_breaker_open", "llm_cache_total"):
        assert f"autoannotator_{metric}" in exprs, metric
    board = json.loads((DEPLOY / "grafana/autoannotator.json").read_text())
    assert {"namespace", "job"} <= {v["name"] for v in board["templating"]["list"]}
    assert 'namespace=~"$namespace", job=~"$job"' in exprs


def test_chart_alerts_when_the_voters_error_bound_stays_above_its_target(
    tools: dict[str, str], tmp_path: Path
) -> None:
    from autoannotator.voter import metrics as voter_metrics

    docs = _template(tools, "-f", str(FULL_VALUES))
    groups = _kinds(docs, "PrometheusRule")[0]["spec"]["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    rule = alerts["AutoAnnotatorErrorBoundAboveTarget"]
    # It compares the two gauges the voter really exports, per install, and waits out a window restart.
    upper = voter_metrics.ERROR_UPPER.describe()[0].name
    target = voter_metrics.TARGET_ERROR.describe()[0].name
    assert re.fullmatch(
        rf"max by \(namespace\) \({upper}\)\s+> on \(namespace\)\s+max by \(namespace\) \({target}\)\s*",
        rule["expr"],
    ), rule["expr"]
    assert re.fullmatch(r"\d+m", rule["for"]) and int(rule["for"][:-1]) >= 5, rule["for"]
    assert rule["labels"]["severity"] == "warning"
    # The expression parses: promtool checks a rule file holding only this alert.
    path = tmp_path / "error-bound.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "error-bound", "rules": [rule]}]}))
    done = subprocess.run([tools["promtool"], "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rules found" in done.stdout


def test_dashboard_shows_the_error_bound_threshold_audit_window_and_audit_spend() -> None:
    board = json.loads((DEPLOY / "grafana/autoannotator.json").read_text())
    panels = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in board["panels"]}
    error = " ".join(panels["Error of accepted labels vs target (voter)"])  # estimate, bound and target together
    for metric in ("voter_error_estimate", "voter_error_upper_bound", "voter_target_error"):
        assert f"autoannotator_{metric}{{" in error, metric
    assert "autoannotator_voter_threshold{" in " ".join(panels["Certified threshold (voter)"])
    assert "autoannotator_voter_audit_window{" in " ".join(panels["Audit window size (voter)"])
    spend = panels["Audit share of review spend"][0]
    assert 'autoannotator_reviewer_record_cost_usd_total{namespace=~"$namespace", job=~"$job", kind="audit"}' in spend
    assert spend.count("autoannotator_reviewer_record_cost_usd_total{") == 3  # audit (or 0) / all kinds


def test_dockerfile_has_cpu_cuda_and_trainer_targets_all_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    names = [name for _, name in stages]
    assert {"cpu", "cuda", "trainer"} <= set(names)
    assert dict((n, b) for b, n in stages)["cuda"] == "${CUDA_BASE}"
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:\S+-runtime-", text, flags=re.MULTILINE)
    blocks = re.split(r"^FROM\s", text, flags=re.MULTILINE)[1:]
    for block in blocks:
        name = block.split()[2] if len(block.split()) > 2 else ""
        if name in {"cpu", "cuda", "trainer"}:
            users = re.findall(r"^USER\s+(\S+)", block, flags=re.MULTILINE)
            assert users and users[-1].split(":")[0] not in {"0", "root"}, name
    assert "onnxruntime-gpu" in blocks[names.index("cuda")]
    assert "[train" in blocks[names.index("trainer")] and "[train" not in blocks[names.index("cpu")]
    # Every target runs a service that opens the model store: each installs the S3 backend.
    for target in ("cpu", "cuda", "trainer"):
        assert re.search(r"\.whl\)\[[a-z,]*\bs3\b", blocks[names.index(target)]), target
