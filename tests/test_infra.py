"""Cluster infrastructure: ray_cluster.yaml against Ray's own cluster-config validation, the
KubeRay / MLflow manifests in infra/ (fields, names, ports, images consistent), the
Dockerfile. Files only: no Ray runtime, no cloud, no network.

Each manifest check returns a list of problems, so the tests can show on broken copies that
they do fail."""
from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
NAMESPACE = "nestgen"
SERVICE_ACCOUNT = "nestgen"
# The Serve application KubeRay runs (pipelines/serve.py); one constant to change.
SERVE_IMPORT_PATH = "pipelines.serve:app_builder"
# Where infra/Dockerfile puts the repo's configs/ inside the image.
IMAGE_CONFIGS = "/home/ray/nestgen-src/configs/"
# tomllib is Python 3.11+; the project supports 3.10.
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE).group(1)
IMAGE = f"us-docker.pkg.dev/PROJECT_ID/nestgen/nestgen:{VERSION}"
LOOPBACK = ("127.", "localhost", "[::1]", "0.0.0.0")
# GPUs that come with GCP's accelerator-optimized machine types used in ray_cluster.yaml.
GCP_MACHINE_GPUS = {"g2-standard-16": 1, "a2-ultragpu-8g": 8}


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> dict[tuple[str, str], dict]:
    """(kind, name) -> document, over every YAML file in infra/."""
    out = {}
    for path in sorted(INFRA.glob("*.yaml")):
        for doc in _load(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _dockerfile_args() -> dict[str, str]:
    text = (INFRA / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", text, flags=re.MULTILINE))


def _mlflow_service() -> tuple[str, int]:
    svc = _manifests()[("Service", "mlflow")]
    return svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]


def _mlflow_uri() -> str:
    name, port = _mlflow_service()
    return f"http://{name}.{NAMESPACE}.svc.cluster.local:{port}"


# ---- ray_cluster.yaml: Ray's own validation ------------------------------------------

def _ray_validate(config: dict) -> dict:
    """What `ray up` does before touching the cloud (ray.autoscaler._private.commands.
    _bootstrap_config): fill in the provider's defaults, merge setup commands, check the
    docker section, then validate against ray/autoscaler/ray-schema.json and the
    cross-field rules. GCP's own provider module needs googleapiclient, so its one local
    rule (a Compute Engine node config names a machineType) is checked here."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    for name, node in prepared["available_node_types"].items():
        if "machineType" not in node["node_config"]:
            raise ValueError(f"{name}: a GCP Compute Engine node_config needs machineType")
    return prepared


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_ray_cluster_passes_ray_validation(cluster):
    prepared = _ray_validate(cluster)
    assert prepared["provider"]["type"] == "gcp"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _drop_resources(c):
    del c["available_node_types"]["gpu_l4"]["resources"]


def _fractional_gpu(c):
    c["available_node_types"]["gpu_l4"]["resources"]["GPU"] = 0.5


def _unknown_key(c):
    c["worker_nodes_typo"] = {}


def _bad_head_type(c):
    c["head_node_type"] = "no_such_type"


def _min_over_max(c):
    c["available_node_types"]["gpu_l4"]["min_workers"] = c["max_workers"] + 1


def _no_machine_type(c):
    del c["available_node_types"]["gpu_a100x8"]["node_config"]["machineType"]


def _command_not_string(c):
    c["setup_commands"] = [["pip", "install", "."]]


@pytest.mark.parametrize("breakage", [_drop_resources, _fractional_gpu, _unknown_key, _bad_head_type,
                                      _min_over_max, _no_machine_type, _command_not_string])
def test_ray_cluster_broken_copy_fails_validation(cluster, breakage):
    broken = copy.deepcopy(cluster)
    breakage(broken)
    with pytest.raises(Exception) as err:    # jsonschema.ValidationError or ValueError
        _ray_validate(broken)
    assert type(err.value).__name__ in ("ValidationError", "ValueError")


def test_ray_cluster_nodes_image_and_setup(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    for name, t in gpu_types.items():
        # Autoscaling: none at start, some allowed.
        assert t.get("min_workers", 0) == 0 and t["max_workers"] >= 1, name
        nc = t["node_config"]
        assert GCP_MACHINE_GPUS.get(nc["machineType"]) == t["resources"]["GPU"], \
            f"{name}: {nc['machineType']} does not have {t['resources']['GPU']} GPUs"
        assert nc["scheduling"]["onHostMaintenance"] == "TERMINATE", f"{name}: GPU VMs cannot migrate"
        assert any("nvidia-smi" in c for c in t["initialization_commands"]), name
    assert cluster["docker"]["image"] == IMAGE
    # The checkout is synced to every node and installed there.
    assert cluster["file_mounts"] == {"~/nestgen": "."}
    assert any(re.search(r"pip install .*~/nestgen\b", c) for c in cluster["setup_commands"])
    assert ".venv" in cluster["rsync_exclude"]
    assert cluster["provider"]["project_id"] == "PROJECT_ID"


def test_ray_cluster_mlflow_uri_on_every_node(cluster):
    _, port = _mlflow_service()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cluster[key] if "ray start" in c]
        assert len(start) == 1, key
        m = re.search(r"export MLFLOW_TRACKING_URI=([^;]+);", start[0])
        assert m and start[0].index("export MLFLOW_TRACKING_URI") < start[0].index("ray start"), \
            f"{key}: MLFLOW_TRACKING_URI must be exported before `ray start` so Ray's processes inherit it"
        uri = m.group(1)
        assert uri.startswith("http://") and uri.endswith(f":{port}"), uri
        assert not any(lb in uri for lb in LOOPBACK), f"{key}: {uri} is loopback on a real cluster"
    assert "$RAY_HEAD_IP" in "".join(cluster["worker_start_ray_commands"])
    server = next(c for c in cluster["head_start_ray_commands"] if "mlflow server" in c)
    assert f"--port {port}" in server and "--host 0.0.0.0" in server
    dest = re.search(r"--artifacts-destination[= ](\S+)", server).group(1)
    assert dest == _mlflow_artifacts_destination(), "ray_cluster.yaml and infra/mlflow.yaml store artifacts apart"


# ---- infra/*.yaml: Kubernetes manifests -----------------------------------------------

def _container_problems(where: str, c: dict, *, gpu: bool | None) -> list[str]:
    p = []
    if c.get("image") != IMAGE:
        p.append(f"{where}: image {c.get('image')!r} != {IMAGE!r}")
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(part, {}):
                p.append(f"{where}: resources.{part}.{r} missing")
    gpus = res.get("limits", {}).get("nvidia.com/gpu", 0)
    if res.get("requests", {}).get("nvidia.com/gpu", gpus) != gpus:
        p.append(f"{where}: GPU requests must equal limits")
    if gpu is True and not gpus:
        p.append(f"{where}: GPU worker without nvidia.com/gpu limits")
    if gpu is False and gpus:
        p.append(f"{where}: GPU limits on a node without GPUs")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("MLFLOW_TRACKING_URI") != _mlflow_uri():
        p.append(f"{where}: MLFLOW_TRACKING_URI {env.get('MLFLOW_TRACKING_URI')!r} != {_mlflow_uri()!r}")
    return p


def cluster_spec_problems(spec: dict) -> list[str]:
    """A KubeRay RayClusterSpec: head and worker groups, images, resources, GPUs, MLflow env."""
    p = []
    ray_version = _dockerfile_args()["RAY_VERSION"]
    if spec.get("rayVersion") != ray_version:
        p.append(f"rayVersion {spec.get('rayVersion')!r} != the image's Ray {ray_version}")
    head = spec.get("headGroupSpec")
    if not head or "template" not in head:
        return p + ["headGroupSpec.template missing"]
    hpod = head["template"]["spec"]
    if hpod.get("serviceAccountName") != SERVICE_ACCOUNT:
        p.append("head: serviceAccountName")
    p += _container_problems("head", hpod["containers"][0], gpu=False)
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        p.append("no workerGroupSpecs")
    any_gpu = False
    for g in groups:
        name = g.get("groupName", "?")
        if not (0 <= g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", -1)):
            p.append(f"{name}: need minReplicas <= replicas <= maxReplicas")
        pod = g["template"]["spec"]
        if pod.get("serviceAccountName") != SERVICE_ACCOUNT:
            p.append(f"{name}: serviceAccountName")
        accel = pod.get("nodeSelector", {}).get("cloud.google.com/gke-accelerator")
        any_gpu |= bool(accel)
        p += _container_problems(name, pod["containers"][0], gpu=bool(accel))
        if accel and not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            p.append(f"{name}: GPU nodes are tainted nvidia.com/gpu: tolerate it")
    if not any_gpu:
        p.append("no GPU worker group")
    return p


def rayjob_problems(job: dict) -> list[str]:
    p = []
    if job.get("apiVersion") != "ray.io/v1":
        p.append(f"apiVersion {job.get('apiVersion')}")
    entry = job.get("spec", {}).get("entrypoint", "")
    m = re.fullmatch(r"nestgen run (\S+\.yaml)( .*)?", entry)
    if not m:
        return p + [f"entrypoint {entry!r} is not `nestgen run CONFIG`"]
    cfg = m.group(1)
    if not cfg.startswith(IMAGE_CONFIGS) or not (ROOT / "configs" / cfg[len(IMAGE_CONFIGS):]).is_file():
        p.append(f"entrypoint config {cfg} is not a shipped config inside the image")
    if "rayClusterSpec" not in job.get("spec", {}):
        return p + ["spec.rayClusterSpec missing"]
    return p + cluster_spec_problems(job["spec"]["rayClusterSpec"])


def rayservice_problems(svc: dict) -> list[str]:
    p = []
    if svc.get("apiVersion") != "ray.io/v1":
        p.append(f"apiVersion {svc.get('apiVersion')}")
    spec = svc.get("spec", {})
    if not isinstance(spec.get("serveConfigV2"), str):
        p.append("spec.serveConfigV2 must be a YAML string")
    else:
        apps = (yaml.safe_load(spec["serveConfigV2"]) or {}).get("applications") or []
        if [a.get("import_path") for a in apps] != [SERVE_IMPORT_PATH]:
            p.append(f"serveConfigV2 import paths {[a.get('import_path') for a in apps]} != [{SERVE_IMPORT_PATH}]")
        for a in apps:
            uri = (a.get("args") or {}).get("mlflow_tracking_uri")
            if uri != _mlflow_uri():
                p.append(f"serve args mlflow_tracking_uri {uri!r} != {_mlflow_uri()!r}")
    # RayService names its cluster `rayClusterConfig` (RayJob: `rayClusterSpec`).
    if "rayClusterConfig" not in spec:
        return p + ["spec.rayClusterConfig missing"]
    return p + cluster_spec_problems(spec["rayClusterConfig"])


def test_every_manifest_parses_with_required_fields():
    files = sorted(INFRA.glob("*.yaml"))
    assert {f.name for f in files} >= {"namespace.yaml", "mlflow.yaml", "rayjob.yaml", "rayservice.yaml"}
    for path in files:
        docs = _load(path)
        assert docs, path
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), path
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == NAMESPACE, f"{path}: {d['kind']} outside {NAMESPACE}"
    kinds = {k for k, _ in _manifests()}
    assert {"Namespace", "ServiceAccount", "RayJob", "RayService", "Deployment", "StatefulSet", "Service"} <= kinds
    assert _manifests()[("ServiceAccount", SERVICE_ACCOUNT)]["metadata"]["annotations"][
        "iam.gke.io/gcp-service-account"].endswith("@PROJECT_ID.iam.gserviceaccount.com")


def test_rayjob():
    assert rayjob_problems(_manifests()[("RayJob", "nestgen-pipeline")]) == []


def test_rayservice():
    assert rayservice_problems(_manifests()[("RayService", "nestgen-serve")]) == []


def _no_gpu_limits(d):
    g = d["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    for grp in g:
        for c in grp["template"]["spec"]["containers"]:
            c["resources"]["limits"].pop("nvidia.com/gpu", None)
            c["resources"]["requests"].pop("nvidia.com/gpu", None)


def _other_tag(d):
    d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = IMAGE + "-old"


def _loopback_mlflow(d):
    env = d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    env[0]["value"] = "http://127.0.0.1:5000"


def _no_head(d):
    del d["spec"]["rayClusterSpec"]["headGroupSpec"]


def _bad_entrypoint(d):
    d["spec"]["entrypoint"] = "python train.py"


def _missing_config(d):
    d["spec"]["entrypoint"] = f"nestgen run {IMAGE_CONFIGS}no_such_config.yaml"


def _ray_version(d):
    d["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.0"


@pytest.mark.parametrize("breakage", [_no_gpu_limits, _other_tag, _loopback_mlflow, _no_head,
                                      _bad_entrypoint, _missing_config, _ray_version])
def test_rayjob_checks_catch_broken_copies(breakage):
    job = copy.deepcopy(_manifests()[("RayJob", "nestgen-pipeline")])
    breakage(job)
    assert rayjob_problems(job)


def test_rayservice_checks_catch_broken_copies():
    svc = _manifests()[("RayService", "nestgen-serve")]
    for edit in (lambda s: s["spec"].update(serveConfigV2=s["spec"]["serveConfigV2"].replace(
                     SERVE_IMPORT_PATH, "pipelines.serve:nope")),
                 lambda s: s["spec"].update(rayClusterSpec=s["spec"].pop("rayClusterConfig"))):
        broken = copy.deepcopy(svc)
        edit(broken)
        assert rayservice_problems(broken)


def test_rayservice_serve_args_and_import_path():
    """The Serve app's args are valid ServeConfig fields, and the import path imports."""
    from nestgen.config import ServeConfig
    from nestgen.configschema import from_dict
    spec = _manifests()[("RayService", "nestgen-serve")]["spec"]
    app = yaml.safe_load(spec["serveConfigV2"])["applications"][0]
    cfg = from_dict(ServeConfig, app["args"], "serve")
    cfg.validate()
    # Each GPU replica fits one pod of the worker group, and max_replicas pods exist.
    group = spec["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cfg.gpus_per_replica <= limits["nvidia.com/gpu"] and cfg.cpus_per_replica <= float(limits["cpu"])
    assert group["maxReplicas"] >= max(cfg.num_replicas, cfg.max_replicas)
    module, attr = SERVE_IMPORT_PATH.split(":")
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        pytest.skip(f"{module} does not exist yet")
    assert callable(getattr(importlib.import_module(module), attr))


def _mlflow_artifacts_destination() -> str:
    args = _manifests()[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith("--artifacts-destination="))


def test_mlflow_server_names_ports_and_credentials():
    m = _manifests()
    name, port = _mlflow_service()
    svc = m[("Service", name)]
    dep = m[("Deployment", "mlflow")]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] == port == c["ports"][0]["containerPort"]
    assert f"--port={port}" in c["args"] and "--host=0.0.0.0" in c["args"]
    assert c["image"] == IMAGE and pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert _mlflow_artifacts_destination().startswith("gs://")
    env = {e["name"]: e["value"] for e in c["env"]}
    # PostgreSQL backend at the StatefulSet's Service, credentials from the Secret.
    pg_svc = m[("Service", "mlflow-postgres")]
    pg = m[("StatefulSet", "mlflow-postgres")]
    pg_port = pg_svc["spec"]["ports"][0]["port"]
    backend = urlparse(env["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme == "postgresql"
    assert (backend.hostname, backend.port) == (pg_svc["metadata"]["name"], pg_port)
    assert "$(POSTGRES_PASSWORD)" in env["MLFLOW_BACKEND_STORE_URI"]
    assert pg["spec"]["serviceName"] == pg_svc["metadata"]["name"]
    assert pg_svc["spec"]["selector"] == pg["spec"]["template"]["metadata"]["labels"]
    pg_c = pg["spec"]["template"]["spec"]["containers"][0]
    assert pg_c["ports"][0]["containerPort"] == pg_port
    secrets = {e["secretRef"]["name"] for e in c["envFrom"] + pg_c["envFrom"]}
    assert secrets == {"mlflow-postgres"}, secrets
    # MLflow's host-header guard admits the in-cluster name the clients use.
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert urlparse(_mlflow_uri()).netloc in allowed
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_serve_cluster_configs_reach_the_mlflow_service():
    """configs/serve_*.yaml that name an in-cluster MLflow use the Service's name and port."""
    name, port = _mlflow_service()
    for path in sorted((ROOT / "configs").glob("serve_*.yaml")):
        for app in (yaml.safe_load(path.read_text()) or {}).get("applications", []):
            uri = (app.get("args") or {}).get("mlflow_tracking_uri", "")
            if not uri.startswith("http") or any(lb in uri for lb in LOOPBACK):
                continue
            u = urlparse(uri)
            assert (u.hostname.split(".")[0], u.port) == (name, port), f"{path.name}: {uri}"


# ---- images and the Dockerfile --------------------------------------------------------

def _all_images() -> list[tuple[str, str]]:
    found = []

    def walk(where, node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    found.append((where, v))
                walk(where, v)
        elif isinstance(node, list):
            for v in node:
                walk(where, v)
    for path in sorted(INFRA.glob("*.yaml")):
        for d in _load(path):
            walk(f"{path.name}:{d['kind']}", d)
    walk("ray_cluster.yaml", yaml.safe_load((ROOT / "ray_cluster.yaml").read_text()))
    return found


def test_one_image_tag_everywhere():
    images = _all_images()
    ours = [(w, i) for w, i in images if "/nestgen/" in i]
    assert len(ours) >= 6
    assert {i for _, i in ours} == {IMAGE}, ours
    assert _dockerfile_args()["NESTGEN_VERSION"] == VERSION
    others = {i for _, i in images} - {IMAGE}
    assert others == {"postgres:16"}, others
    for doc in (INFRA / "README.md", INFRA / "Dockerfile"):
        assert f"-t {IMAGE} " in doc.read_text(), f"{doc.name} builds another tag"


def _run_instructions(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [line[4:] for line in joined.splitlines() if line.startswith("RUN ")]


def test_dockerfile():
    text = (INFRA / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(froms) == 1 and re.fullmatch(r"python:3\.11-slim(-\w+)?", froms[0]), froms
    args = _dockerfile_args()
    # The same torch pin as the Makefile's CPU install.
    make_pin = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), flags=re.MULTILINE).group(1)
    assert args["TORCH_VERSION"] == make_pin == "2.13.0"
    assert args["TORCH_VARIANT"] in ("cuda", "cpu")
    runs = _run_instructions(text)
    pip_cmds = [seg for r in runs for seg in re.split(r"&&|;|\|\|", r) if "pip install" in seg]
    assert pip_cmds
    assert not any("torchvision" in s for s in pip_cmds), "the image must not install torchvision"
    torch_installs = [s for s in pip_cmds if '"torch==${TORCH_VERSION}"' in s]
    cpu = [s for s in torch_installs if "--index-url https://download.pytorch.org/whl/cpu" in s]
    assert len(cpu) == 1 and len(torch_installs) == 2, torch_installs
    project = [s for s in pip_cmds if "/home/ray/nestgen-src" in s]
    assert len(project) == 1 and "-c /opt/venv/torch-constraint.txt" in project[0]
    assert '"ray[default,serve,train,data]==${RAY_VERSION}"' in project[0]
    assert 'echo "torch==${TORCH_VERSION}" > /opt/venv/torch-constraint.txt' in text
    # Every COPY source exists in the repo, and the configs land where rayjob.yaml reads them.
    for srcs in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.MULTILINE):
        for src in srcs.split():
            assert (ROOT / src).exists(), src
    assert f"configs {IMAGE_CONFIGS.rstrip('/')}" in text
    # Loopback-only Ray would make a cluster node unreachable.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in text
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
