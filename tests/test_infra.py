"""Cluster infrastructure: ray_cluster.yaml against Ray's own cluster-config validation, the
KubeRay / MLflow manifests in infra/ (fields, names, ports, images consistent), the
Dockerfile, and the cluster's exposure (loopback dashboard and Ray token auth on the VMs,
hardened pods, NetworkPolicies evaluated against the manifests' pods and ports, the read-only
Serve account, MLflow auth, Secrets by name). Files only: no Ray runtime, no cloud, no network.

Each manifest check returns a list of problems, so the tests can show on broken copies that
they do fail."""
from __future__ import annotations

import copy
import importlib
import ipaddress
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
NAMESPACE = "nestgen"
SERVICE_ACCOUNT = "nestgen"
SERVE_SERVICE_ACCOUNT = "nestgen-serve"     # read-only storage: the Serve cluster's pods
# The Serve application KubeRay runs (pipelines/serve/app.py); one constant to change.
SERVE_IMPORT_PATH = "pipelines.serve:app_builder"
# Where infra/Dockerfile puts the repo's configs/ inside the image.
IMAGE_CONFIGS = "/home/ray/nestgen-src/configs/"
# tomllib is Python 3.11+; the project supports 3.10.
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE).group(1)
IMAGE = f"us-docker.pkg.dev/PROJECT_ID/nestgen/nestgen:{VERSION}"
LOOPBACK = ("127.", "localhost", "[::1]", "0.0.0.0")
# Kinds without a namespace.
CLUSTER_SCOPED = ("Namespace", "GatewayClass")
# The label every pod of a RayJob / RayService carries with that manifest's name, and that every
# NetworkPolicy selector of Ray pods names (KubeRay's ray.io/cluster holds a generated name).
CLUSTER_LABEL = "nestgen.io/ray-cluster"
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
    assert cluster["file_mounts"]["~/nestgen"] == "."
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


def cluster_spec_problems(spec: dict, service_account: str) -> list[str]:
    """A KubeRay RayClusterSpec: head and worker groups, images, resources, GPUs, MLflow env,
    every pod under the given service account."""
    p = []
    ray_version = _dockerfile_args()["RAY_VERSION"]
    if spec.get("rayVersion") != ray_version:
        p.append(f"rayVersion {spec.get('rayVersion')!r} != the image's Ray {ray_version}")
    head = spec.get("headGroupSpec")
    if not head or "template" not in head:
        return p + ["headGroupSpec.template missing"]
    hpod = head["template"]["spec"]
    if hpod.get("serviceAccountName") != service_account:
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
        if pod.get("serviceAccountName") != service_account:
            p.append(f"{name}: serviceAccountName")
        accel = pod.get("nodeSelector", {}).get("cloud.google.com/gke-accelerator")
        any_gpu |= bool(accel)
        p += _container_problems(name, pod["containers"][0], gpu=bool(accel))
        if accel and not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            p.append(f"{name}: GPU nodes are tainted nvidia.com/gpu: tolerate it")
    if not any_gpu:
        p.append("no GPU worker group")
    return p


def _readme_configmaps() -> dict[str, dict[str, str]]:
    """ConfigMap name -> {key: source file}, from the `kubectl create configmap` commands in
    infra/README.md."""
    text = re.sub(r"\s*\\\n\s*", " ", (INFRA / "README.md").read_text())
    return {m.group(1): dict(re.findall(r"--from-file=([\w.-]+)=(\S+)", m.group(2)))
            for m in re.finditer(r"kubectl -n nestgen create configmap (\S+)((?: --from-file=\S+)+)", text)}


def _head_configmap_file(job: dict, path: str) -> tuple[str, str] | None:
    """(ConfigMap, key) whose file the RayJob's head container sees at `path` (the job's
    driver runs on the head), or None."""
    pod = job["spec"]["rayClusterSpec"].get("headGroupSpec", {}).get("template", {}).get("spec", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in (pod.get("containers") or [{}])[0].get("volumeMounts", []):
        cm = volumes.get(mount["name"], {}).get("configMap")
        if not cm or not path.startswith(mount["mountPath"].rstrip("/") + "/"):
            continue
        rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
        items = {i["path"]: i["key"] for i in cm.get("items", [])}
        key = items.get(rel) if items else rel
        if key:
            return cm["name"], key
    return None


def rayjob_problems(job: dict) -> list[str]:
    """Also: the entrypoint's config is a file the head really has, either a key of a
    ConfigMap that infra/README.md makes from a shipped config (then the config, with the
    entrypoint's --set overrides, must load), or a shipped config inside the image."""
    from pipelines.cli import build_parser
    from pipelines.config import load_run_config
    p = []
    if job.get("apiVersion") != "ray.io/v1":
        p.append(f"apiVersion {job.get('apiVersion')}")
    entry = job.get("spec", {}).get("entrypoint", "")
    if not re.fullmatch(r"nestgen run \S+\.yaml( .*)?", entry):
        return p + [f"entrypoint {entry!r} is not `nestgen run CONFIG`"]
    if "rayClusterSpec" not in job.get("spec", {}):
        return p + ["spec.rayClusterSpec missing"]
    try:
        args = build_parser().parse_args(shlex.split(entry)[1:])     # what `nestgen` itself accepts
    except SystemExit:
        return p + [f"entrypoint {entry!r}: nestgen refuses its arguments"]
    cfg, source = args.config, None
    mounted = _head_configmap_file(job, cfg)
    if mounted:
        name, key = mounted
        source = _readme_configmaps().get(name, {}).get(key)
        if source is None or not (ROOT / source).is_file():
            p.append(f"entrypoint reads {cfg}, key {key} of ConfigMap {name}, which infra/README.md does "
                     "not make from a config file")
            source = None
    elif cfg.startswith(IMAGE_CONFIGS) and (ROOT / "configs" / cfg[len(IMAGE_CONFIGS):]).is_file():
        source = ROOT / "configs" / cfg[len(IMAGE_CONFIGS):]
    else:
        p.append(f"entrypoint config {cfg} is neither a ConfigMap file on the head nor a shipped config in the image")
    if source is not None:
        try:
            load_run_config(str(ROOT / source), args.overrides)
        except ValueError as e:
            p.append(f"entrypoint config {cfg} with its overrides: {e}")
    return p + cluster_spec_problems(job["spec"]["rayClusterSpec"], SERVICE_ACCOUNT)


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
    return p + cluster_spec_problems(spec["rayClusterConfig"], SERVE_SERVICE_ACCOUNT)


def test_every_manifest_parses_with_required_fields():
    files = sorted(INFRA.glob("*.yaml"))
    assert {f.name for f in files} >= {"namespace.yaml", "mlflow.yaml", "rayjob.yaml", "rayservice.yaml"}
    for path in files:
        docs = _load(path)
        assert docs, path
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), path
            if d["kind"] not in CLUSTER_SCOPED:
                assert d["metadata"].get("namespace") == NAMESPACE, f"{path}: {d['kind']} outside {NAMESPACE}"
    kinds = {k for k, _ in _manifests()}
    assert {"Namespace", "ServiceAccount", "RayJob", "RayService", "Deployment", "StatefulSet", "Service"} <= kinds
    assert _manifests()[("ServiceAccount", SERVICE_ACCOUNT)]["metadata"]["annotations"][
        "iam.gke.io/gcp-service-account"].endswith("@PROJECT_ID.iam.gserviceaccount.com")


def test_rayjob():
    job = _manifests()[("RayJob", "nestgen-pipeline")]
    assert rayjob_problems(job) == []
    # The config comes from a ConfigMap (a changed config needs no new image) made from a
    # shipped config, and `--set` overrides on the entrypoint, as the README shows, work.
    assert _head_configmap_file(job, job["spec"]["entrypoint"].split()[2]) is not None
    job["spec"]["entrypoint"] += " --set train.steps=1000 --set mlflow.registered_alias=production"
    assert rayjob_problems(job) == []


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


def _other_configmap_key(d):
    d["spec"]["entrypoint"] = d["spec"]["entrypoint"].replace("pipeline.yaml", "pipline.yaml")


def _config_not_mounted(d):
    head = d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["volumes"] = [v for v in head["volumes"] if "configMap" not in v]


def _bad_override(d):
    d["spec"]["entrypoint"] += " --set train.stepz=1000"


def _ray_version(d):
    d["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.0"


@pytest.mark.parametrize("breakage", [_no_gpu_limits, _other_tag, _loopback_mlflow, _no_head,
                                      _bad_entrypoint, _missing_config, _other_configmap_key, _config_not_mounted,
                                      _bad_override, _ray_version])
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
    from pipelines.config import ServeConfig
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
    assert secrets == {"mlflow-postgres", "mlflow-auth"}, secrets
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
    assert '"mlflow[auth]"' in project[0], "the MLflow servers run the basic-auth app"
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


# ---- exposure: the VM cluster's dashboard, tokens and secrets ----------------------------

def _start_command(cluster: dict, key: str) -> str:
    return next(c for c in cluster[key] if "ray start" in c)


def _before_ray_start(cmd: str, text: str) -> bool:
    return text in cmd and cmd.index(text) < cmd.index("ray start")


def cluster_exposure_problems(cluster: dict) -> list[str]:
    """ray_cluster.yaml: dashboard and job API on the head's loopback, Ray token auth on every
    node with the token file synced from the user's machine, the secrets file loaded before
    `ray start`, MLflow behind its basic-auth app."""
    p = []
    mounts = cluster.get("file_mounts", {})
    head = _start_command(cluster, "head_start_ray_commands")
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    if hosts != ["127.0.0.1"]:
        p.append(f"head: --dashboard-host {hosts}, want exactly 127.0.0.1 (reached through the SSH tunnel)")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cmd = _start_command(cluster, key)
        if not re.search(r"export [^;]*\bRAY_AUTH_MODE=token\b", cmd) or not _before_ray_start(cmd, "RAY_AUTH_MODE"):
            p.append(f"{key}: RAY_AUTH_MODE=token must be exported before `ray start`")
        m = re.search(r"RAY_AUTH_TOKEN_PATH=\$HOME/(\S+?);", cmd)
        if not m or f"~/{m.group(1)}" not in mounts:
            p.append(f"{key}: RAY_AUTH_TOKEN_PATH must name a file that file_mounts syncs to every node")
        m = re.search(r"set -a; \. ~/(\S+); set \+a;", cmd)
        if not m or f"~/{m.group(1)}" not in mounts or not _before_ray_start(cmd, m.group(0)):
            p.append(f"{key}: the secrets file must be synced and loaded before `ray start`")
    server = next((c for c in cluster["head_start_ray_commands"] if "mlflow server" in c), "")
    if "--app-name basic-auth" not in server:
        p.append("the head's MLflow server must run the basic-auth app")
    m = re.search(r"MLFLOW_AUTH_CONFIG_PATH=\$HOME/nestgen/(\S+)", server)
    if not m or not (ROOT / m.group(1)).is_file():
        p.append("the head's MLflow auth config must be a file of this checkout (synced to ~/nestgen)")
    if "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD" not in server:
        p.append("the head's MLflow admin must be the cluster's MLflow user (from the secrets file)")
    return p


def test_ray_cluster_exposure(cluster):
    assert cluster_exposure_problems(cluster) == []
    # The checkout holds no token and no secrets file: they come from the user's machine.
    assert all(not (ROOT / src.replace("~/", "")).exists() for dst, src in cluster["file_mounts"].items()
               if dst != "~/nestgen")


def _swap_in(key, old, new):
    def edit(c):
        c[key] = [x.replace(old, new) for x in c[key]]
    edit.__name__ = f"{key}:{old}->{new}"
    return edit


@pytest.mark.parametrize("breakage", [
    _swap_in("head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"),
    _swap_in("head_start_ray_commands", " --dashboard-host=127.0.0.1", ""),
    _swap_in("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
    _swap_in("head_start_ray_commands", "--app-name basic-auth ", ""),
    lambda c: c["file_mounts"].pop("~/.ray/auth_token"),
    lambda c: c["file_mounts"].pop("~/.nestgen/cluster.env"),
])
def test_ray_cluster_exposure_catches_broken_copies(cluster, breakage):
    broken = copy.deepcopy(cluster)
    breakage(broken)
    assert cluster_exposure_problems(broken)
    _ray_validate(broken)      # still a valid cluster config: only the exposure check sees it


def _auth_config(ini_text: str, tmp_path, monkeypatch):
    """MLflow's own reader of its basic-auth config (what `--app-name basic-auth` reads)."""
    # Loaded by file: the auth package's __init__ needs Flask-WTF (mlflow[auth], in the image),
    # its config reader does not.
    import importlib.util
    import mlflow
    spec = importlib.util.spec_from_file_location(
        "mlflow_auth_config", Path(mlflow.__file__).parent / "server" / "auth" / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    read_auth_config = module.read_auth_config
    path = tmp_path / "basic_auth.ini"
    path.write_text(ini_text)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin-from-secret")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "password-from-secret")
    return read_auth_config()


def test_vm_mlflow_auth_config(cluster, tmp_path, monkeypatch):
    server = next(c for c in cluster["head_start_ray_commands"] if "mlflow server" in c)
    ini = re.search(r"MLFLOW_AUTH_CONFIG_PATH=\$HOME/nestgen/(\S+)", server).group(1)
    conf = _auth_config((ROOT / ini).read_text(), tmp_path, monkeypatch)
    assert conf.admin_password == "password-from-secret"     # never from the file
    assert conf.default_permission == "READ"
    # Users beside the runs, on the head VM's MLflow volume (docker.head_run_options).
    store = re.search(r"--backend-store-uri sqlite:///(\S+)/mlflow\.db", server).group(1)
    assert conf.database_uri == f"sqlite:///{store}/basic_auth.db"
    assert any(store in o for o in cluster["docker"]["head_run_options"])


# ---- exposure: Kubernetes pods ----------------------------------------------------------

def _docker_uid() -> int:
    text = (INFRA / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", text).group(1))
    assert re.search(rf"^USER {uid}(:\d+)?$", text, flags=re.MULTILINE), "the image must run as its user"
    return uid


def _pod_templates(docs: dict) -> list[tuple[str, dict, dict]]:
    """(where, pod template {metadata, spec}, the owning manifest) for every pod the manifests make."""
    out = []
    for (kind, name), d in docs.items():
        spec = d.get("spec", {})
        if kind in ("Deployment", "StatefulSet"):
            out.append((f"{kind}/{name}", spec["template"], d))
        elif kind in ("RayJob", "RayService"):
            rc = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
            out.append((f"{kind}/{name}/head", rc["headGroupSpec"]["template"], d))
            for g in rc.get("workerGroupSpecs", []):
                out.append((f"{kind}/{name}/{g['groupName']}", g["template"], d))
            if kind == "RayJob":
                if "submitterPodTemplate" not in spec:
                    out.append((f"{kind}/{name}/submitter", {"spec": {}}, d))   # KubeRay's default: not hardened
                else:
                    out.append((f"{kind}/{name}/submitter", spec["submitterPodTemplate"], d))
    return out


def _ray_cluster_spec(d: dict) -> dict | None:
    return d.get("spec", {}).get("rayClusterSpec") or d.get("spec", {}).get("rayClusterConfig")


def container_security_problems(where: str, c: dict, volumes: dict) -> list[str]:
    p = []
    sc = c.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        p.append(f"{where}: allowPrivilegeEscalation must be false")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []) or (sc.get("capabilities") or {}).get("add"):
        p.append(f"{where}: capabilities must drop ALL and add none")
    if sc.get("privileged"):
        p.append(f"{where}: privileged")
    if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
        p.append(f"{where}: runs as root")
    if sc.get("readOnlyRootFilesystem") is not True:
        p.append(f"{where}: readOnlyRootFilesystem must be true")
    tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        p.append(f"{where}: a read-only root needs an emptyDir at /tmp")
    return p


def pod_security_problems(where: str, template: dict, owner: dict, service_accounts: dict) -> list[str]:
    """Non-root, RuntimeDefault seccomp, hardened containers (the autoscaler sidecar KubeRay adds
    to a Ray head included), no Kubernetes API token unless the pod is a Ray head whose
    autoscaler needs one."""
    p = []
    pod = template.get("spec", {})
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        p.append(f"{where}: runAsNonRoot must be true")
    if not isinstance(psc.get("runAsUser"), int) or psc["runAsUser"] == 0:
        p.append(f"{where}: runAsUser must be a non-zero uid")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.append(f"{where}: seccompProfile must be RuntimeDefault")
    if any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        p.append(f"{where}: host namespaces")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    if not containers and not where.endswith("/submitter"):
        p.append(f"{where}: no containers")
    for c in containers:
        p += container_security_problems(f"{where}/{c.get('name')}", c, volumes)
        if c.get("image") == IMAGE and psc.get("runAsUser") != _docker_uid():
            p.append(f"{where}: runAsUser {psc.get('runAsUser')} is not the image's user {_docker_uid()}")
    rc = _ray_cluster_spec(owner)
    is_head = where.endswith("/head")
    if rc and is_head and rc.get("enableInTreeAutoscaling"):
        auto = rc.get("autoscalerOptions") or {}
        p += container_security_problems(f"{where}/autoscaler", auto, volumes)
    sa = service_accounts.get(pod.get("serviceAccountName", "default"), {})
    automount = pod.get("automountServiceAccountToken", sa.get("automountServiceAccountToken", True))
    may_automount = bool(rc and is_head and rc.get("enableInTreeAutoscaling"))
    if automount and not may_automount:
        p.append(f"{where}: mounts a Kubernetes API token it does not need")
    return p


def _service_accounts(docs: dict) -> dict:
    return {name: d for (kind, name), d in docs.items() if kind == "ServiceAccount"}


def _all_pod_problems(docs: dict) -> list[str]:
    sas = _service_accounts(docs)
    return [x for where, t, owner in _pod_templates(docs) for x in pod_security_problems(where, t, owner, sas)]


def test_every_pod_runs_hardened():
    docs = _manifests()
    assert len(_pod_templates(docs)) >= 9
    assert _all_pod_problems(docs) == []


def _ray_head(docs, kind, name):
    return _ray_cluster_spec(docs[(kind, name)])["headGroupSpec"]["template"]["spec"]


def _mlflow_pod(docs):
    return docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]


@pytest.mark.parametrize("breakage", [
    lambda m: _mlflow_pod(m).pop("securityContext"),
    lambda m: _mlflow_pod(m)["securityContext"].update(runAsUser=0),
    lambda m: _mlflow_pod(m)["containers"][0].pop("securityContext"),
    lambda m: _mlflow_pod(m)["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
    lambda m: _mlflow_pod(m)["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
    lambda m: _mlflow_pod(m)["containers"][0]["volumeMounts"].pop(),          # no /tmp
    lambda m: _mlflow_pod(m).update(automountServiceAccountToken=True),
    lambda m: _ray_head(m, "RayService", "nestgen-serve")["securityContext"].pop("seccompProfile"),
    lambda m: _ray_cluster_spec(m[("RayService", "nestgen-serve")])["autoscalerOptions"].pop("securityContext"),
    lambda m: _ray_cluster_spec(m[("RayJob", "nestgen-pipeline")])["workerGroupSpecs"][1]["template"]["spec"][
        "containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
    lambda m: m[("RayJob", "nestgen-pipeline")]["spec"].pop("submitterPodTemplate"),
    lambda m: m[("ServiceAccount", "nestgen-serve")].update(automountServiceAccountToken=True),
    lambda m: m[("StatefulSet", "mlflow-postgres")]["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
])
def test_pod_checks_catch_broken_copies(breakage):
    docs = copy.deepcopy(_manifests())
    breakage(docs)
    assert _all_pod_problems(docs)


def test_serve_service_account_can_only_read_storage():
    """The Serve pods run as nestgen-serve: its Google SA is granted only object reads (the
    README's gcloud commands are the binding), it mounts no Kubernetes token (the head's
    autoscaler aside), and no manifest grants it a Kubernetes role."""
    docs = _manifests()
    sa = docs[("ServiceAccount", "nestgen-serve")]
    gsa = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert gsa == "nestgen-serve@PROJECT_ID.iam.gserviceaccount.com"
    assert sa["automountServiceAccountToken"] is False
    rc = _ray_cluster_spec(docs[("RayService", "nestgen-serve")])
    pods = [rc["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in rc["workerGroupSpecs"]]
    assert {p["serviceAccountName"] for p in pods} == {"nestgen-serve"}
    assert not any(p.get("automountServiceAccountToken") for p in pods[1:])
    for (kind, _), d in docs.items():
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            assert all(s.get("name") != "nestgen-serve" for s in d.get("subjects", [])), d
    # The pipeline's own account writes; Serve's does not share it.
    assert docs[("ServiceAccount", SERVICE_ACCOUNT)]["metadata"]["annotations"][
        "iam.gke.io/gcp-service-account"] != gsa
    readme = re.sub(r"\s*\\\n\s*", " ", (INFRA / "README.md").read_text())
    roles = {}
    for line in readme.splitlines():
        if "add-iam-policy-binding" in line and re.search(r"--role", line):
            member = re.search(r"--member\s+\"?([^\s\"]+)", line).group(1)
            roles.setdefault(member, set()).add(re.search(r"--role\s+(\S+)", line).group(1))
    assert roles.get(f"serviceAccount:{gsa}") == {"roles/storage.objectViewer"}, roles
    wi = [line for line in readme.splitlines() if "workloadIdentityUser" in line and gsa in line]
    assert wi and "[nestgen/nestgen-serve]" in wi[0]


# ---- exposure: NetworkPolicies ----------------------------------------------------------

OPERATOR = ({"kubernetes.io/metadata.name": "kuberay-system"}, {"app.kubernetes.io/name": "kuberay-operator"})
OUR_NS = {"kubernetes.io/metadata.name": NAMESPACE}
GCLB = "35.191.3.4"          # a Google Cloud load balancer / health-check address
# Envoy Gateway runs a Gateway's Envoy proxies in its own namespace, labelled with the Gateway
# (internal/infrastructure/kubernetes/proxy/resource.go, internal/gatewayapi/translator.go).
ENVOY_NS = {"kubernetes.io/metadata.name": "envoy-gateway-system"}


def _envoy_proxy(gateway: str, namespace: str = NAMESPACE) -> dict:
    return _pod_src({"app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
                     "app.kubernetes.io/managed-by": "envoy-gateway",
                     "gateway.envoyproxy.io/owning-gateway-name": gateway,
                     "gateway.envoyproxy.io/owning-gateway-namespace": namespace}, ENVOY_NS)


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and val in e.get("values", []), "NotIn": not has or val not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, src: dict) -> bool:
    if "ipBlock" in peer:
        return src.get("ip") is not None and ipaddress.ip_address(src["ip"]) in ipaddress.ip_network(peer["ipBlock"]["cidr"])
    if src.get("pod") is None:
        return False
    ns_ok = _selects(peer["namespaceSelector"], src["ns"]) if "namespaceSelector" in peer else src["ns"] == OUR_NS
    pod_ok = _selects(peer["podSelector"], src["pod"]) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _port_admits(rule_ports, port: int) -> bool:
    if not rule_ports:
        return True
    return any(p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"])
               for p in rule_ports)


def admitted(policies: list[dict], dst: dict, src: dict, port: int) -> bool:
    """Kubernetes NetworkPolicy ingress semantics for one TCP connection to a pod of this
    namespace with labels dst: a pod no Ingress policy selects takes everything; a selected
    pod takes what any rule of any selecting policy admits."""
    selecting = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _selects(p["spec"]["podSelector"], dst)]
    if not selecting:
        return True
    for pol in selecting:
        for rule in pol["spec"].get("ingress") or []:
            peers = rule.get("from")
            if (not peers or any(_peer_admits(peer, src) for peer in peers)) and _port_admits(rule.get("ports"), port):
                return True
    return False


def _pod_src(labels: dict, ns: dict = OUR_NS) -> dict:
    return {"ns": ns, "pod": labels}


def _kuberay_labels(template: dict, node_type: str, cr_name: str) -> dict:
    """A Ray pod's labels: its template's plus what KubeRay sets (common/pod.go, labelPod),
    among them ray.io/cluster, a generated <name>-<5 random characters>."""
    return dict(template.get("metadata", {}).get("labels", {}),
                **{"ray.io/node-type": node_type, "ray.io/cluster": f"{cr_name}-x7k2q", "ray.io/is-ray-node": "yes"})


def _ray_pods(docs: dict, kind: str, name: str) -> list[tuple[dict, list[int]]]:
    """(labels, ports it listens on) for each pod group of a KubeRay manifest: the template's
    labels plus what KubeRay adds (ray.io/node-type, ray.io/cluster), its container ports and
    every fixed Ray port of its rayStartParams (the worker-port range by its ends)."""
    rc = _ray_cluster_spec(docs[(kind, name)])
    out = []
    for node_type, group in [("head", rc["headGroupSpec"])] + [("worker", g) for g in rc["workerGroupSpecs"]]:
        labels = _kuberay_labels(group["template"], node_type, name)
        params = group.get("rayStartParams", {})
        ports = [int(v) for k, v in params.items() if k.endswith("-port")]
        # Serve's HTTP port is for clients (serve-http), not for Ray's own traffic.
        ports += [p["containerPort"] for c in group["template"]["spec"]["containers"] for p in c.get("ports", [])
                  if p.get("name") != "serve"]
        out.append((labels, sorted(set(ports))))
    return out


def network_problems(docs: dict) -> list[str]:
    policies = [d for (kind, _), d in docs.items() if kind == "NetworkPolicy"]
    p = []
    if not any(pol["spec"]["podSelector"] == {} and pol["spec"].get("policyTypes") == ["Ingress"]
               and not pol["spec"].get("ingress") for pol in policies):
        p.append("no default-deny ingress policy for the namespace")
    stranger = _pod_src({"app": "something-else"})
    other_ns = _pod_src({"nestgen.io/component": "serve"}, ns={"kubernetes.io/metadata.name": "elsewhere"})
    mlflow = docs[("Deployment", "mlflow")]["spec"]["template"]["metadata"]["labels"]
    pg = docs[("StatefulSet", "mlflow-postgres")]["spec"]["template"]["metadata"]["labels"]
    clusters = {"pipeline": _ray_pods(docs, "RayJob", "nestgen-pipeline"),
                "serve": _ray_pods(docs, "RayService", "nestgen-serve")}
    for comp, pods in clusters.items():
        other = next(o for o in clusters if o != comp)
        # A Ray cluster made from a copy of this manifest under another name: the same
        # component label, its own name in CLUSTER_LABEL (and a different ray.io/cluster).
        twin = _pod_src(dict(pods[-1][0], **{CLUSTER_LABEL: "nestgen-copy", "ray.io/cluster": "nestgen-copy-a1b2c"}))
        for dst, ports in pods:
            for src, _ in pods:
                for port in ports:
                    if not admitted(policies, dst, _pod_src(src), port):
                        p.append(f"{comp}: {src} -> {dst}:{port} refused (Ray needs it)")
            for port in ports:
                for name, src in (("another cluster's pod", _pod_src(clusters[other][0][0])),
                                  ("a pod of another Ray cluster of the same component", twin),
                                  ("a stranger pod", stranger), ("another namespace", other_ns),
                                  ("the MLflow server", _pod_src(mlflow))):
                    if port != 8000 and admitted(policies, dst, src, port):
                        p.append(f"{comp}: {name} reaches {dst}:{port}")
            if dst["ray.io/node-type"] == "head" and not admitted(policies, dst, _pod_src(OPERATOR[1], OPERATOR[0]), 8265):
                p.append(f"{comp}: the KubeRay operator cannot reach the head's dashboard")
        if not admitted(policies, mlflow, _pod_src(pods[-1][0]), 5000):
            p.append(f"{comp}: its pods cannot reach MLflow")
        if admitted(policies, mlflow, twin, 5000):
            p.append(f"{comp}: a pod of another Ray cluster of the same component reaches MLflow")
    submitter = docs[("RayJob", "nestgen-pipeline")]["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    head = clusters["pipeline"][0][0]
    if not admitted(policies, head, _pod_src(submitter), 8265):
        p.append("the RayJob submitter cannot reach the dashboard")
    if admitted(policies, head, _pod_src(submitter), 6379):
        p.append("the RayJob submitter reaches the GCS")
    # Serve's port 8000 only through the Gateway (its body cap and header rules): from its
    # Envoy proxies, from nothing else, load balancers and in-cluster clients included.
    serve_worker = clusters["serve"][-1][0]
    gateways = [name for kind, name in docs if kind == "Gateway"]
    if not any(admitted(policies, serve_worker, _envoy_proxy(g), 8000) for g in gateways):
        p.append(f"the Envoy proxies of the Gateway {gateways} cannot reach Serve's port 8000")
    for name, src in (("a stranger pod", stranger), ("another namespace", other_ns), ("the internet", {"ip": "8.8.8.8"}),
                      ("a pipeline pod", _pod_src(head)), ("a Google Cloud load balancer", {"ip": GCLB}),
                      ("a namespace labelled nestgen.io/serve-client", _pod_src({}, {"nestgen.io/serve-client": "true"})),
                      ("another Gateway's Envoy proxy", _envoy_proxy("someone-elses")),
                      ("a Gateway of the same name in another namespace", _envoy_proxy(gateways[0] if gateways else "", "elsewhere"))):
        if admitted(policies, serve_worker, src, 8000):
            p.append(f"{name} reaches Serve's port 8000")
    for name, src in (("a stranger pod", stranger), ("another namespace", other_ns), ("the submitter", _pod_src(submitter))):
        if admitted(policies, mlflow, src, 5000):
            p.append(f"{name} reaches MLflow")
    if not admitted(policies, pg, _pod_src(mlflow), 5432):
        p.append("MLflow cannot reach PostgreSQL")
    for name, src in (("a stranger pod", stranger), ("a Ray pod", _pod_src(head)), ("a Serve pod", _pod_src(serve_worker))):
        if admitted(policies, pg, src, 5432):
            p.append(f"{name} reaches PostgreSQL")
    if not any(_selects(pol["spec"]["podSelector"], pg) and "Egress" in pol["spec"].get("policyTypes", [])
               and not pol["spec"].get("egress") for pol in policies):
        p.append("PostgreSQL may connect out")
    return p


def test_network_policies_admit_only_what_each_component_needs():
    docs = _manifests()
    assert network_problems(docs) == []
    # The selectors select real pods: every policy's podSelector matches some pod template.
    labels = [_pod_labels(w, t, owner) for w, t, owner in _pod_templates(docs)]
    for (kind, name), pol in docs.items():
        if kind == "NetworkPolicy":
            assert any(_selects(pol["spec"]["podSelector"], lb) for lb in labels), name


def _policy(docs, name):
    return docs[("NetworkPolicy", name)]["spec"]


@pytest.mark.parametrize("breakage", [
    lambda m: m.pop(("NetworkPolicy", "default-deny-ingress")),
    lambda m: m.pop(("NetworkPolicy", "ray-serve-internal")),
    lambda m: _policy(m, "ray-pipeline-internal")["ingress"][0]["ports"].pop(0),          # no GCS
    lambda m: _policy(m, "ray-pipeline-internal")["ingress"][0].update({"from": [{"podSelector": {}}]}),
    lambda m: _policy(m, "mlflow")["ingress"][0].pop("from"),
    lambda m: _policy(m, "mlflow-postgres")["ingress"][0]["from"][0]["podSelector"].update(matchLabels={}),
    lambda m: _policy(m, "mlflow-postgres").update(policyTypes=["Ingress"]),
    lambda m: _policy(m, "mlflow-postgres").update(egress=[{}]),                          # egress anywhere
    lambda m: _policy(m, "serve-http")["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}),
    lambda m: _policy(m, "serve-http")["ingress"][0]["from"].append({"ipBlock": {"cidr": "35.191.0.0/16"}}),
    lambda m: _policy(m, "serve-http")["ingress"][0]["from"][0].pop("namespaceSelector"),
    lambda m: _policy(m, "ray-serve-internal")["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop(CLUSTER_LABEL),
    lambda m: _policy(m, "mlflow")["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop(CLUSTER_LABEL),
    lambda m: _policy(m, "ray-pipeline-dashboard")["ingress"][0]["from"].pop(0),
    # A pinned port moved in the RayService but not in the policies.
    lambda m: _ray_cluster_spec(m[("RayService", "nestgen-serve")])["headGroupSpec"]["rayStartParams"].update(
        {"node-manager-port": "7000"}),
])
def test_network_checks_catch_broken_copies(breakage):
    docs = copy.deepcopy(_manifests())
    breakage(docs)
    assert network_problems(docs)


def _pod_labels(where: str, template: dict, owner: dict) -> dict:
    """The labels a pod of this template has once running (KubeRay's added to Ray pods)."""
    group = where.split("/")[2:]
    if owner["kind"] in ("RayJob", "RayService") and group != ["submitter"]:
        return _kuberay_labels(template, "head" if group == ["head"] else "worker", owner["metadata"]["name"])
    return dict(template.get("metadata", {}).get("labels", {}))


def cluster_label_problems(docs: dict) -> list[str]:
    """Every pod of a RayJob / RayService (the submitter too) carries CLUSTER_LABEL = that
    manifest's name, and every NetworkPolicy selector that selects such pods, a policy's own
    podSelector or a peer's in this namespace, pins CLUSTER_LABEL to one of those names: so no
    rule admits, or is about, the pods of any Ray cluster in the namespace."""
    p = []
    names = {name for kind, name in docs if kind in ("RayJob", "RayService")}
    ray_pods = []
    for where, template, owner in _pod_templates(docs):
        if owner["kind"] in ("RayJob", "RayService"):
            labels = _pod_labels(where, template, owner)
            if labels.get(CLUSTER_LABEL) != owner["metadata"]["name"]:
                p.append(f"{where}: {CLUSTER_LABEL}={labels.get(CLUSTER_LABEL)!r}, want {owner['metadata']['name']!r}")
            ray_pods.append(labels)

    def unpinned(selector: dict) -> bool:
        """Selects Ray pods without naming their cluster, or names a cluster no manifest makes."""
        named = (selector.get("matchLabels") or {}).get(CLUSTER_LABEL)
        return named not in names and (named is not None or any(_selects(selector, lb) for lb in ray_pods))

    for (kind, name), pol in docs.items():
        if kind != "NetworkPolicy" or not pol["spec"].get("ingress"):       # deny-only policies name no one
            continue
        if unpinned(pol["spec"]["podSelector"]):
            p.append(f"{name}: its podSelector selects Ray pods without naming one of {sorted(names)} in {CLUSTER_LABEL}")
        for rule in pol["spec"]["ingress"]:
            for peer in rule.get("from") or []:
                ours = "namespaceSelector" not in peer or _selects(peer["namespaceSelector"], OUR_NS)
                if ours and "podSelector" in peer and unpinned(peer["podSelector"]):
                    p.append(f"{name}: a peer selects Ray pods without naming one of {sorted(names)} in {CLUSTER_LABEL}")
    return p


def test_network_policies_name_the_ray_cluster():
    """Selecting Ray pods by component alone lets another Ray cluster in the namespace (a copy
    of a manifest under another name) reach these ports; KubeRay's ray.io/cluster cannot be
    named beforehand (generated), so the manifests label their pods with their own name."""
    docs = _manifests()
    assert cluster_label_problems(docs) == []
    pinned = {(pol["spec"]["podSelector"].get("matchLabels") or {}).get(CLUSTER_LABEL)
              for (kind, _), pol in docs.items() if kind == "NetworkPolicy"}
    assert {"nestgen-pipeline", "nestgen-serve"} <= pinned


def _template_labels(docs, kind, name, group):
    rc = _ray_cluster_spec(docs[(kind, name)])
    g = rc["headGroupSpec"] if group == "head" else next(w for w in rc["workerGroupSpecs"] if w["groupName"] == group)
    return g["template"]["metadata"]["labels"]


@pytest.mark.parametrize("breakage", [
    lambda m: _template_labels(m, "RayJob", "nestgen-pipeline", "gpu-l4").pop(CLUSTER_LABEL),
    lambda m: _template_labels(m, "RayService", "nestgen-serve", "head").update({CLUSTER_LABEL: "nestgen-pipeline"}),
    lambda m: m[("RayJob", "nestgen-pipeline")]["spec"]["submitterPodTemplate"]["metadata"]["labels"].pop(CLUSTER_LABEL),
    lambda m: _policy(m, "ray-pipeline-internal")["podSelector"]["matchLabels"].pop(CLUSTER_LABEL),
    lambda m: _policy(m, "ray-serve-dashboard")["podSelector"]["matchLabels"].update({CLUSTER_LABEL: "nestgen"}),
    lambda m: _policy(m, "ray-pipeline-dashboard")["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop(CLUSTER_LABEL),
    lambda m: _policy(m, "mlflow")["ingress"][0]["from"][1]["podSelector"].update(
        matchLabels={}, matchExpressions=[{"key": CLUSTER_LABEL, "operator": "Exists"}]),
])
def test_cluster_label_checks_catch_broken_copies(breakage):
    docs = copy.deepcopy(_manifests())
    breakage(docs)
    assert cluster_label_problems(docs)


# ---- exposure: what stands in front of Serve's HTTP proxy ---------------------------------

def _serve_config(svc: dict) -> tuple[dict, object]:
    """(serveConfigV2 as a dict, the app's ServeConfig with its defaults filled in)."""
    from pipelines.config import ServeConfig
    from nestgen.configschema import from_dict
    conf = yaml.safe_load(svc["spec"]["serveConfigV2"])
    return conf, from_dict(ServeConfig, conf["applications"][0]["args"], "serve")


def _seconds(duration: str) -> float:
    """A Gateway API Duration ("140s", "2m20s", "1h", "500ms") in seconds."""
    parts = re.findall(r"(\d+)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def _bytes(quantity) -> int:
    """A Kubernetes resource.Quantity as Envoy Gateway's requestBuffer.limit takes it, in bytes."""
    m = re.fullmatch(r"([1-9][0-9]*)([KMGTPE]i|[kMGTPE])?", str(quantity))
    assert m, quantity
    scale = {"": 1, **{s: 1000 ** (i + 1) for i, s in enumerate("kMGTPE")},
             **{s + "i": 1024 ** (i + 1) for i, s in enumerate("KMGTPE")}}
    return int(m.group(1)) * scale[m.group(2) or ""]


def _targets(policy: dict, kind: str, names: set[str]) -> bool:
    return any(t.get("kind") == kind and t.get("name") in names for t in policy["spec"].get("targetRefs", []))


def serve_front_problems(docs: dict) -> list[str]:
    """Serve's own timeout is set above what a request may legitimately wait, and the one way
    in (infra/gateway.yaml) caps the body at the app's max_body_bytes before Serve's proxy
    queues it, bounds slow uploads, cannot be told to lift Serve's timeout, and waits longer
    than Serve; nothing else exposes the proxy."""
    from ray.serve._private.constants import (SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER,
                                              SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER)
    p = []
    svc = docs[("RayService", "nestgen-serve")]
    conf, cfg = _serve_config(svc)
    http = conf.get("http_options") or {}
    timeout = http.get("request_timeout_s")
    # A request waits for at most one decode ahead of it, then its own: each ends by
    # decode_deadline_s, or the replica fails its health check.
    if timeout is None:
        p.append("serveConfigV2 http_options.request_timeout_s missing: Serve's proxy holds requests without bound")
    elif not timeout > 2 * cfg.decode_deadline_s:
        p.append(f"request_timeout_s {timeout} is not above 2 x decode_deadline_s ({cfg.decode_deadline_s:g} s): "
                 "a request one decode behind would get 408 while its replica is healthy")
    backend = f"{svc['metadata']['name']}-serve-svc"          # the Service KubeRay makes for the RayService
    routes = [d for (kind, _), d in docs.items() if kind == "HTTPRoute"
              and any(b.get("name") == backend for r in d["spec"].get("rules", []) for b in r.get("backendRefs", []))]
    if len(routes) != 1:
        return p + [f"want one HTTPRoute to {backend}, found {len(routes)}"]
    route = routes[0]
    gateways = {ref["name"] for ref in route["spec"].get("parentRefs", [])}
    if not gateways or not gateways <= {name for kind, name in docs if kind == "Gateway"}:
        p.append(f"HTTPRoute {route['metadata']['name']}: parentRefs {sorted(gateways)} are not Gateways of infra/")
    for rule in route["spec"]["rules"]:
        if any(b.get("port") != http.get("port") for b in rule.get("backendRefs", [])):
            p.append(f"HTTPRoute backend port != http_options.port {http.get('port')}")
        removed = {h.lower() for f in rule.get("filters", []) if f.get("type") == "RequestHeaderModifier"
                   for h in f["requestHeaderModifier"].get("remove", [])}
        for header in (SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER, SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER):
            if header not in removed:
                p.append(f"HTTPRoute passes {header} on: a client could lift Serve's request timeout")
        limit = (rule.get("timeouts") or {}).get("request")
        if timeout is not None and (limit is None or not _seconds(limit) > timeout):
            p.append(f"HTTPRoute timeouts.request {limit} is not above request_timeout_s {timeout}: "
                     "the gateway would cut requests Serve still serves")
    caps = [d["spec"]["requestBuffer"].get("limit") for (kind, _), d in docs.items()
            if kind == "BackendTrafficPolicy" and "requestBuffer" in d["spec"]
            and (_targets(d, "HTTPRoute", {route["metadata"]["name"]}) or _targets(d, "Gateway", gateways))]
    if [_bytes(c) for c in caps] != [cfg.max_body_bytes]:
        p.append(f"body caps in front of Serve {caps} != [serve.max_body_bytes {cfg.max_body_bytes}]")
    if not any(kind == "ClientTrafficPolicy" and _targets(d, "Gateway", gateways)
               and ((d["spec"].get("timeout") or {}).get("http") or {}).get("requestReceivedTimeout")
               for (kind, _), d in docs.items()):
        p.append("no requestReceivedTimeout on the Gateway: slow uploads hold its buffers")
    if svc["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
        p.append("the RayService's serve Service is exposed beside the Gateway")
    for (kind, name), d in docs.items():
        if kind == "Ingress" or (kind == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")):
            p.append(f"{kind} {name} exposes a way in beside the Gateway")
    return p


def test_serve_has_a_request_timeout_and_a_body_cap_in_front():
    docs = _manifests()
    assert serve_front_problems(docs) == []
    conf, cfg = _serve_config(docs[("RayService", "nestgen-serve")])
    assert conf["http_options"]["request_timeout_s"] > 2 * cfg.decode_deadline_s
    cap = docs[("BackendTrafficPolicy", "nestgen-serve-body-cap")]["spec"]["requestBuffer"]["limit"]
    assert _bytes(cap) == cfg.max_body_bytes == 4_000_000


def _serve_args(edit):
    def apply(m):
        svc = m[("RayService", "nestgen-serve")]
        conf = yaml.safe_load(svc["spec"]["serveConfigV2"])
        edit(conf)
        svc["spec"]["serveConfigV2"] = yaml.safe_dump(conf)
    return apply


def _route_rule(m):
    return m[("HTTPRoute", "nestgen-serve")]["spec"]["rules"][0]


@pytest.mark.parametrize("breakage", [
    _serve_args(lambda c: c["http_options"].pop("request_timeout_s")),
    _serve_args(lambda c: c["http_options"].update(request_timeout_s=c["applications"][0]["args"]["decode_deadline_s"])),
    _serve_args(lambda c: c["applications"][0]["args"].update(max_body_bytes=16_000_000)),
    _serve_args(lambda c: c["applications"][0]["args"].update(decode_deadline_s=300)),
    lambda m: m[("BackendTrafficPolicy", "nestgen-serve-body-cap")]["spec"]["requestBuffer"].update(limit="4Mi"),
    lambda m: m.pop(("BackendTrafficPolicy", "nestgen-serve-body-cap")),
    lambda m: m.pop(("ClientTrafficPolicy", "nestgen-serve-clients")),
    lambda m: _route_rule(m).pop("filters"),
    lambda m: _route_rule(m)["filters"][0]["requestHeaderModifier"]["remove"].pop(0),
    lambda m: _route_rule(m)["timeouts"].update(request="130s"),
    lambda m: _route_rule(m)["backendRefs"][0].update(port=8080),
    lambda m: m.pop(("HTTPRoute", "nestgen-serve")),
    lambda m: m[("RayService", "nestgen-serve")]["spec"].update(serveService={"spec": {"type": "LoadBalancer"}}),
    lambda m: m.update({("Ingress", "nestgen-serve"): {"kind": "Ingress", "spec": {}}}),
])
def test_serve_front_checks_catch_broken_copies(breakage):
    docs = copy.deepcopy(_manifests())
    breakage(docs)
    assert serve_front_problems(docs)


# ---- exposure: credentials, by Secret name ---------------------------------------------

def _readme_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the `kubectl create secret generic` commands in infra/README.md."""
    text = re.sub(r"\s*\\\n\s*", " ", (INFRA / "README.md").read_text())
    out = {}
    for m in re.finditer(r'kubectl -n nestgen create secret generic (\S+)((?: --from-literal=\w+=(?:"[^"]*"|\S+))+)', text):
        out[m.group(1)] = set(re.findall(r"--from-literal=(\w+)=", m.group(2)))
    return out


def _secret_uses(docs: dict) -> dict[str, set[str]]:
    """Secret name -> keys the manifests read by secretKeyRef (an envFrom secretRef reads all)."""
    uses: dict[str, set[str]] = {}

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if ref:
                uses.setdefault(ref["name"], set()).add(ref["key"])
            if "secretRef" in node:
                uses.setdefault(node["secretRef"]["name"], set())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    for d in docs.values():
        walk(d)
    return uses


ENV_FROM_KEYS = {"mlflow-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
                 "mlflow-auth": {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                 "MLFLOW_FLASK_SERVER_SECRET_KEY"}}


def test_secrets_referenced_consistently_by_name():
    """Every Secret a manifest reads is one infra/README.md tells you to create, with the keys
    read; every Secret the README creates is read; envFrom Secrets carry the variables their
    consumers need (MLflow's admin and CSRF key, PostgreSQL's user)."""
    uses = _secret_uses(_manifests())
    made = _readme_secrets()
    assert set(uses) == set(made), (uses, made)
    for name, keys in uses.items():
        assert keys <= made[name], (name, keys, made[name])
    for name, keys in ENV_FROM_KEYS.items():
        assert made[name] == keys, name
    assert {"mlflow-pipeline-client", "mlflow-serve-client", "nestgen-api-keys"} <= set(made)


def _ray_containers(docs, kind, name):
    rc = _ray_cluster_spec(docs[(kind, name)])
    groups = [rc["headGroupSpec"]] + rc["workerGroupSpecs"]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_ray_pods_authenticate_and_serve_wants_api_keys():
    """Ray token auth on both KubeRay clusters; every Ray container logs in to MLflow with its
    cluster's own user (from a Secret, never a literal); the Serve app wants bearer tokens
    whose keys every Serve container has from a Secret; the local Serve config leaves them off."""
    docs = _manifests()
    for kind, name, secret in (("RayJob", "nestgen-pipeline", "mlflow-pipeline-client"),
                               ("RayService", "nestgen-serve", "mlflow-serve-client")):
        assert _ray_cluster_spec(docs[(kind, name)])["authOptions"] == {"mode": "token"}, name
        for c in _ray_containers(docs, kind, name):
            env = {e["name"]: e for e in c["env"]}
            for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert env[var]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": var}, (name, var)
            assert not any("RAY_AUTH_TOKEN" in e for e in env), "KubeRay's authOptions sets the token"
    var = "NESTGEN_API_KEYS"
    serve_args = yaml.safe_load(docs[("RayService", "nestgen-serve")]["spec"]["serveConfigV2"])
    assert serve_args["applications"][0]["args"]["api_keys_env"] == var
    cluster_file = yaml.safe_load((ROOT / "configs" / "serve_digits_cluster.yaml").read_text())
    assert cluster_file["applications"][0]["args"]["api_keys_env"] == var
    assert "api_keys_env" not in yaml.safe_load((ROOT / "configs" / "serve_digits.yaml").read_text())[
        "applications"][0]["args"]
    for c in _ray_containers(docs, "RayService", "nestgen-serve"):
        ref = {e["name"]: e for e in c["env"]}[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "nestgen-api-keys", ref
    assert f"{var}=" in (INFRA / "README.md").read_text()


def test_mlflow_requires_auth(tmp_path, monkeypatch):
    """The Kubernetes MLflow server runs the basic-auth app, reads its config from the mounted
    ConfigMap (which MLflow's own reader accepts), keeps users in the PostgreSQL Service's
    database with credentials from the environment, and its admin from the Secret."""
    docs = _manifests()
    pod = _mlflow_pod(docs)
    c = pod["containers"][0]
    assert "--app-name=basic-auth" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mount = next(m for m in c["volumeMounts"] if env["MLFLOW_AUTH_CONFIG_PATH"].startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = docs[("ConfigMap", volume["configMap"]["name"])]
    ini = cm["data"][env["MLFLOW_AUTH_CONFIG_PATH"][len(mount["mountPath"]) + 1:]]
    conf = _auth_config(ini, tmp_path, monkeypatch)
    assert conf.admin_password == "password-from-secret" and "admin_password" not in ini
    assert conf.default_permission == "READ"
    db = urlparse(conf.database_uri)
    pg_svc = docs[("Service", "mlflow-postgres")]
    assert (db.scheme, db.hostname, db.port) == ("postgresql", "mlflow-postgres", pg_svc["spec"]["ports"][0]["port"])
    assert db.password is None, "no password in a ConfigMap"
    assert (env["PGUSER"], env["PGPASSWORD"], env["PGDATABASE"]) == (
        "$(POSTGRES_USER)", "$(POSTGRES_PASSWORD)", "$(POSTGRES_DB)")
    assert "mlflow-auth" in {e["secretRef"]["name"] for e in c["envFrom"]}
    # Probes hit /health, which the auth app leaves open.
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
