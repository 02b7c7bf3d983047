"""deploy/gcp: every Kubernetes manifest validated offline against the Kubernetes 1.30 schemas (strict:
unknown fields refused), the Cloud Run service and jobs parsed, and both held against the code: commands
the CLI accepts, settings config.py declares, secrets only from secret references, probe paths in the
app's URL map, one port everywhere, selectors that select."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from carecast.config import Settings
from carecast.models.tasks import TASKS
from tests.unit.deploy import (
    ROOT,
    SECRET_SETTINGS,
    SETTING_NAMES,
    app_routes,
    dockerfile_port,
    load_documents,
    load_yaml,
    option_value,
    parse_cli,
)

GCP = ROOT / "deploy" / "gcp"
K8S_VERSION = "1.30"
# Custom resources: no schema ships with kubernetes-validate; checked field by field below.
CUSTOM_KINDS = {"SecretProviderClass", "Kustomization"}
IMAGE = "REGION-docker.pkg.dev/PROJECT_ID/carecast/carecast"


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return app_routes(tmp_path_factory.mktemp("routes"))


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted((GCP / "gke").glob("*.yaml")) for doc in load_documents(path)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def deployment(name: str) -> dict[str, Any]:
    return next(d for d in by_kind("Deployment") if d["metadata"]["name"] == name)


def carecast_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == "carecast")


@pytest.mark.parametrize(("name", "doc"), k8s_documents(),
                         ids=[f"{n}:{d['kind']}/{d.get('metadata', {}).get('name', '')}" for n, d in k8s_documents()])
def test_every_kubernetes_manifest_validates_offline(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in CUSTOM_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_the_validator_refuses_a_misspelt_field() -> None:
    broken = copy.deepcopy(deployment("carecast-api"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(GCP / "gke" / "kustomization.yaml")
    files = {p.name for p in (GCP / "gke").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert [i["name"] for i in kustomization["images"]] == [IMAGE]


def test_gke_commands_ports_and_probes_match_the_app(routes: set[str]) -> None:
    api = deployment("carecast-api")["spec"]["template"]["spec"]
    container = carecast_container(api)
    assert parse_cli(container["args"]).name == "serve"
    port = int(option_value(container["args"], "--port"))
    assert port == dockerfile_port() == container["ports"][0]["containerPort"]
    port_name = container["ports"][0]["name"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] in (port, port_name), probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    service = next(s for s in by_kind("Service") if s["metadata"]["name"] == "carecast-api")
    assert service["spec"]["ports"][0]["targetPort"] in (port, port_name)
    worker = carecast_container(deployment("carecast-worker")["spec"]["template"]["spec"])
    assert parse_cli(worker["args"]).name == "worker"
    assert container["image"].rsplit(":", 1)[0] == worker["image"].rsplit(":", 1)[0] == IMAGE


def test_selectors_select_the_pods_they_mean() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("HorizontalPodAutoscaler",):
        for hpa in by_kind(kind):
            target = hpa["spec"]["scaleTargetRef"]
            assert target["kind"] == "Deployment" and target["name"] in deployments
            assert hpa["spec"]["minReplicas"] >= 2  # the PDB can then always leave one running
    for pdb in by_kind("PodDisruptionBudget"):
        target = deployments[pdb["metadata"]["name"]]
        assert pdb["spec"]["selector"]["matchLabels"] == target["spec"]["selector"]["matchLabels"]
    service = by_kind("Service")[0]
    api_labels = deployments["carecast-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()
    policies = {p["metadata"]["name"]: p for p in by_kind("NetworkPolicy")}
    assert policies["default-deny"]["spec"]["podSelector"] == {}
    assert set(policies["default-deny"]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress = policies["carecast-api-ingress"]
    assert ingress["spec"]["podSelector"]["matchLabels"].items() <= api_labels.items()
    assert [p["port"] for p in ingress["spec"]["ingress"][0]["ports"]] == [dockerfile_port()]


def test_gke_settings_are_real_and_secrets_come_from_secret_manager() -> None:
    config_map = by_kind("ConfigMap")[0]["data"]
    assert set(config_map) <= SETTING_NAMES and not set(config_map) & SECRET_SETTINGS
    settings = Settings.from_env(config_map)  # every value parses (database URL, KMS key name...)
    assert settings.is_production and settings.kms_key
    provider = by_kind("SecretProviderClass")[0]
    assert provider["spec"]["provider"] == "gcp"
    synced = provider["spec"]["secretObjects"][0]
    files = {line.split('"')[1] for line in provider["spec"]["parameters"]["secrets"].splitlines()
             if line.strip().startswith("path:")}
    assert {item["objectName"] for item in synced["data"]} <= files
    keys = {item["key"] for item in synced["data"]}
    for name in ("carecast-api", "carecast-worker"):
        pod = deployment(name)["spec"]["template"]["spec"]
        container = carecast_container(pod)
        env = {e["name"]: e for e in container["env"]}
        assert set(env) <= SETTING_NAMES
        for var in SECRET_SETTINGS & {"CARECAST_DATA_KEY", "CARECAST_SECRET_KEY"}:
            assert "value" not in env[var], f"{var} must come from a secret"
        for e in env.values():
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == synced["secretName"] and ref["key"] in keys
        csi = [v for v in pod["volumes"] if v.get("csi", {}).get("driver") == "secrets-store.csi.k8s.io"]
        assert csi and csi[0]["csi"]["volumeAttributes"]["secretProviderClass"] == provider["metadata"]["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
        proxy = pod["initContainers"][0]
        assert proxy["restartPolicy"] == "Always" and "--auto-iam-authn" in proxy["args"]
    assert "127.0.0.1:5432" in settings.database_url  # the proxy sidecar's port
    assert "--port=5432" in deployment("carecast-api")["spec"]["template"]["spec"]["initContainers"][0]["args"]


def cloud_run(name: str) -> dict[str, Any]:
    return load_yaml(GCP / "cloudrun" / name)


def run_container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    if doc["kind"] == "Job":
        spec = spec["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "carecast")


def check_run_env(container: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    for name, e in env.items():
        if name in SECRET_SETTINGS or name in {"CARECAST_DATABASE_URL", "CARECAST_EVENTS_URL", "CARECAST_QUEUE_URL"}:
            assert "value" not in e and e["valueFrom"]["secretKeyRef"]["key"] == "latest", name
    plain = {k: e["value"] for k, e in env.items() if "value" in e}
    assert Settings.from_env(plain).is_production
    return env


def test_cloud_run_service_runs_the_api_with_probes_the_app_answers(routes: set[str]) -> None:
    service = cloud_run("service.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.knative.dev/v1", "Service")
    container = run_container(service)
    assert container["image"].rsplit(":", 1)[0] == IMAGE
    assert parse_cli(container["args"]).name == "serve"
    port = int(option_value(container["args"], "--port"))
    assert container["ports"][0]["containerPort"] == port == dockerfile_port()
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes and container[probe]["httpGet"]["port"] == port
    env = check_run_env(container)
    assert {"CARECAST_DATA_KEY", "CARECAST_KMS_KEY", "CARECAST_DATABASE_URL", "CARECAST_EVENTS_URL"} <= set(env)
    assert "CARECAST_QUEUE_URL" not in env  # the database queue with the embedded scoring worker
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # scoring runs outside requests
    assert "carecast-pg" in annotations["run.googleapis.com/cloudsql-instances"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in service["spec"]["template"]["spec"]["volumes"]}
    assert mounts["models"] == env["CARECAST_MODEL_REGISTRY"]["value"]
    assert volumes["models"]["csi"]["driver"] == "gcsfuse.run.googleapis.com"


@pytest.mark.parametrize(("name", "command"), [("migrate-job.yaml", "upgrade"), ("retrain-job.yaml", "retrain")])
def test_cloud_run_jobs_run_real_commands(name: str, command: str) -> None:
    job = cloud_run(name)
    assert (job["apiVersion"], job["kind"]) == ("run.googleapis.com/v1", "Job")
    container = run_container(job)
    assert container["image"] == run_container(cloud_run("service.yaml"))["image"]
    assert parse_cli(container["args"]).name == command
    if command == "retrain":
        assert option_value(container["args"], "--task") in TASKS
    check_run_env(container)


def test_scheduler_runs_the_retrain_job_and_the_fhir_store_feeds_the_relay() -> None:
    setup = (GCP / "setup.sh").read_text()
    job = cloud_run("retrain-job.yaml")["metadata"]["name"]
    assert f"/jobs/{job}:run" in setup and "gcloud scheduler jobs create http" in setup
    assert '"sendFullResource": true' in setup
    assert "--push-endpoint=" in setup and "carecast-fhir-relay" in setup
    for name in ("service.yaml", "migrate-job.yaml", "retrain-job.yaml"):
        assert f"cloudrun/{name}" in setup
