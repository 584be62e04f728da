"""The shipped deployment files agree with the code: settings, serve flags, probes, grace periods, paths.

Parses deploy/Dockerfile, docker-compose.yml, deploy/docker-compose.gpu.yml and deploy/k8s/*.yaml and
runs the replicas' settings through the real CLI; starts no container (CI has no container engine).
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from logit_service import cli
from logit_service.config import ENV_PREFIX, ServerConfig
from logit_service.server.app import SERVICE_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "docker-compose.gpu.yml"
K8S_DIR = DEPLOY / "k8s"
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))
YAML_FILES = [COMPOSE, COMPOSE_GPU, *K8S_FILES]
REPLICA_SERVICES = ("logit-a", "logit-b")
KNOWN_ENV = {ENV_PREFIX + name.upper() for name in ServerConfig.model_fields}
SERVE_FLAGS = {cli._flag(name) for name in ServerConfig.model_fields} | {
    "--no-" + name.replace("_", "-") for name, f in ServerConfig.model_fields.items() if f.annotation is bool
}
TOP_LEVEL_FLAGS = {"--log-level"}
# After SIGTERM the server waits grace_s for in-flight RPCs, then drops its lease and joins its worker
# threads; the orchestrator's deadline must leave room for that, not only for grace_s itself.
SHUTDOWN_MARGIN_S = 5.0


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in K8S_FILES for doc in load_docs(path)]


def k8s_find(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


# --- the Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile_instructions() if kw == keyword]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for rest in dockerfile_values("ENV"):
        for pair in shlex.split(rest):
            key, sep, value = pair.partition("=")
            assert sep, f"ENV {rest!r}: use the KEY=VALUE form"
            env[key] = value
    return env


def dockerfile_exec_form(keyword: str) -> list[str]:
    values = dockerfile_values(keyword)
    assert len(values) == 1, f"deploy/Dockerfile needs exactly one {keyword}, has {len(values)}"
    parsed = yaml.safe_load(values[0])  # a JSON array is a YAML flow sequence
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON array) form, got {values[0]!r}"
    return parsed


def dockerfile_workdir() -> str:
    return dockerfile_values("WORKDIR")[-1]


# --- compose ----------------------------------------------------------------------------------------


def compose_services(path: Path = COMPOSE) -> dict[str, dict]:
    return load_docs(path)[0]["services"]


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def merged_compose_service(name: str, *paths: Path) -> dict:
    """A service as `docker compose -f a -f b` sees it, for the keys these tests read."""
    merged: dict = {}
    for path in paths:
        service = compose_services(path).get(name, {})
        for key, value in service.items():
            if key in {"environment", "build"} and key in merged:
                base = merged[key] if key == "build" else environment_of(merged)
                merged[key] = {**base, **(value if key == "build" else environment_of(service))}
            else:
                merged[key] = value
    return merged


def parse_duration_s(text: str | int | float) -> float:
    """A compose duration ("30s", "1m30s", "1500ms") in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def python_c_code(test: list[str]) -> str:
    assert test[:3] == ["CMD", "python", "-c"], f"healthcheck should run `python -c`, got {test[:3]}"
    return test[3]


# --- what a replica starts with -----------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One replica as a deployment file starts it: its argv, its environment and where it is mounted."""

    name: str
    argv: list[str]
    env: dict[str, str]
    snapshot_mount: str | None
    stop_deadline_s: float


def compose_replicas(*paths: Path) -> list[Replica]:
    entrypoint = dockerfile_exec_form("ENTRYPOINT")
    replicas = []
    for name in REPLICA_SERVICES:
        service = merged_compose_service(name, *paths)
        command = service.get("command", dockerfile_exec_form("CMD"))
        mounts = [v.split(":") for v in service.get("volumes", [])]
        replicas.append(
            Replica(
                name=f"{'+'.join(p.name for p in paths)}:{name}",
                argv=[*service.get("entrypoint", entrypoint), *command],
                env={**dockerfile_env(), **environment_of(service)},
                snapshot_mount=next((m[1] for m in mounts if m[0] == "snapshots"), None),
                stop_deadline_s=parse_duration_s(service.get("stop_grace_period", "10s")),
            )
        )
    return replicas


def k8s_replica(pod_name: str = "logit-service-0") -> Replica:
    (statefulset,) = k8s_find("StatefulSet", "logit-service")
    spec = pod_spec(statefulset)
    (container,) = spec["containers"]
    env = dict(dockerfile_env())
    for source in container.get("envFrom", []):
        (configmap,) = k8s_find("ConfigMap", source["configMapRef"]["name"])
        env.update(configmap["data"])
    for item in container.get("env", []):
        if "valueFrom" in item:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name
        else:  # Kubernetes expands $(NAME) from variables defined earlier in the list
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    snapshot_mount = next(
        (m["mountPath"] for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]), None
    )
    return Replica(
        name="k8s:logit-service",
        argv=[*container.get("command", dockerfile_exec_form("ENTRYPOINT")), *container.get("args", [])],
        env=env,
        snapshot_mount=snapshot_mount,
        stop_deadline_s=float(spec.get("terminationGracePeriodSeconds", 30)),
    )


def all_replicas() -> list[Replica]:
    return [*compose_replicas(COMPOSE), *compose_replicas(COMPOSE, COMPOSE_GPU), k8s_replica()]


def start_config(replica: Replica, monkeypatch: pytest.MonkeyPatch) -> ServerConfig:
    """The ServerConfig `logit-service` would build from this argv and environment (through cli.main)."""
    assert replica.argv[0] == "logit-service", f"{replica.name} does not run logit-service: {replica.argv}"
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in replica.env.items():
        monkeypatch.setenv(name, value)
    started: list[ServerConfig] = []

    async def record(config: ServerConfig) -> None:
        started.append(config)

    monkeypatch.setattr(cli, "_serve", record)
    try:
        assert cli.main(replica.argv[1:]) == 0
    except SystemExit as e:  # argparse rejected the command line or a value
        pytest.fail(f"{replica.name}: `{shlex.join(replica.argv)}` was refused by the CLI (exit {e.code})")
    (config,) = started
    return config


# --- every file -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=_relative)
def test_every_yaml_file_parses_into_mappings(path):
    docs = load_docs(path)

    assert docs, f"{_relative(path)} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)
    if path.parent == K8S_DIR:
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{_relative(path)}: {doc.get('kind')}"
            assert doc["metadata"].get("name")


def _env_names_in_yaml(node) -> set[str]:
    """Every LOGIT_SERVICE_* name used as a mapping key, an `env` entry name, or a KEY=VALUE item."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).startswith(ENV_PREFIX):
                found.add(str(key))
            if key == "name" and isinstance(value, str) and value.startswith(ENV_PREFIX):
                found.add(value)
            found |= _env_names_in_yaml(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and item.startswith(ENV_PREFIX) and "=" in item:
                found.add(item.partition("=")[0])
            found |= _env_names_in_yaml(item)
    return found


def _env_names(path: Path) -> set[str]:
    if path == DOCKERFILE:
        return {k for k in dockerfile_env() if k.startswith(ENV_PREFIX)}
    return set().union(*(_env_names_in_yaml(doc) for doc in load_docs(path)))


# Where the replicas' settings live: each of these must set some, and only real ones.
SETTING_SOURCES = (DOCKERFILE, COMPOSE, COMPOSE_GPU, K8S_DIR / "configmap.yaml", K8S_DIR / "logit-service.yaml")


@pytest.mark.parametrize("path", [DOCKERFILE, *YAML_FILES], ids=_relative)
def test_logit_service_variables_are_server_config_fields(path):
    names = _env_names(path)

    if path in SETTING_SOURCES:
        assert names, f"{_relative(path)} sets no {ENV_PREFIX}* variable"
    # The server refuses to start on an unknown LOGIT_SERVICE_* name; the trainer's use another prefix.
    assert names - KNOWN_ENV == set(), f"{_relative(path)} names settings ServerConfig does not have"


# --- replicas start with the settings the files promise ------------------------------------------


@pytest.mark.parametrize("replica", all_replicas(), ids=lambda r: r.name)
def test_replica_command_line_and_environment_are_accepted_by_the_cli(replica, monkeypatch):
    serve_at = replica.argv.index("serve")
    before, after = replica.argv[1:serve_at], replica.argv[serve_at + 1 :]
    assert {a for a in before if a.startswith("--")} <= TOP_LEVEL_FLAGS, f"{replica.name}: flags before serve"
    assert {a.partition("=")[0] for a in after if a.startswith("--")} <= SERVE_FLAGS, f"{replica.name}: serve flags"

    config = start_config(replica, monkeypatch)

    # Reachable from other containers, on the port the image exposes, serving the mounted volume.
    assert config.host == "0.0.0.0"
    assert str(config.port) in dockerfile_values("EXPOSE")[0].split()
    assert replica.snapshot_mount is not None and config.snapshot_dir == Path(replica.snapshot_mount)
    assert config.redis_url is not None and config.advertise_address


def test_compose_replicas_have_distinct_ids_that_name_themselves(monkeypatch):
    configs = {r.name.rpartition(":")[2]: start_config(r, monkeypatch) for r in compose_replicas(COMPOSE)}

    ids = [c.replica_id or c.advertise_address for c in configs.values()]  # what the server registers under
    assert len(set(ids)) == len(ids), f"replica ids collide in Redis: {ids}"
    for service, config in configs.items():
        # The lease is listed under, and advertises, a name another container can dial.
        assert config.advertise_address == f"{service}:{config.port}"
        assert config.replica_id is None  # defaults to the advertised address


def test_k8s_replica_ids_follow_the_pod_names(monkeypatch):
    configs = [start_config(k8s_replica(f"logit-service-{i}"), monkeypatch) for i in range(2)]
    (service,) = [s for s in k8s_find("Service") if s["spec"].get("clusterIP") == "None"]

    # The pod's DNS name under the headless Service, which other pods resolve (its bare hostname is not).
    assert {c.advertise_address for c in configs} == {f"logit-service-{i}.{service['metadata']['name']}:50051" for i in range(2)}
    assert all(c.replica_id is None for c in configs)  # defaults to the advertised address


@pytest.mark.parametrize("replica", all_replicas(), ids=lambda r: r.name)
def test_stop_deadline_exceeds_the_shutdown_grace(replica, monkeypatch):
    config = start_config(replica, monkeypatch)

    assert replica.stop_deadline_s >= config.grace_s + SHUTDOWN_MARGIN_S, (
        f"{replica.name}: the orchestrator kills after {replica.stop_deadline_s} s, but in-flight RPCs get "
        f"{config.grace_s} s and shutdown needs about {SHUTDOWN_MARGIN_S} s more"
    )


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_redis_url_names_the_redis_service(where):
    if where == "compose":
        services = compose_services()
        urls = {environment_of(services[name])["LOGIT_SERVICE_REDIS_URL"] for name in REPLICA_SERVICES}
        redis_names = {n for n, s in services.items() if str(s.get("image", "")).startswith("redis")}
    else:
        urls = {d["data"]["LOGIT_SERVICE_REDIS_URL"] for d in k8s_find("ConfigMap")}
        redis_names = {s["metadata"]["name"] for s in k8s_find("Service") if s["spec"].get("clusterIP") != "None"}

    (url,) = urls
    assert urlsplit(url).scheme == "redis"
    assert urlsplit(url).hostname in redis_names


# --- health probes ----------------------------------------------------------------------------------


def test_k8s_probes_use_the_grpc_health_service():
    (statefulset,) = k8s_find("StatefulSet", "logit-service")
    (container,) = pod_spec(statefulset)["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")

    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["grpc"] == {"port": port, "service": SERVICE_NAME}
    assert liveness["grpc"]["port"] == port and liveness["grpc"].get("service", "") == ""
    if "startupProbe" in container:
        assert container["startupProbe"]["grpc"]["port"] == port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert set(container.get(probe, {})) & {"exec", "httpGet", "tcpSocket"} == set(), probe


def compose_healthcheck_code(service_name: str) -> str:
    return python_c_code(compose_services()[service_name]["healthcheck"]["test"])


@pytest.mark.parametrize("service_name", REPLICA_SERVICES)
def test_compose_healthcheck_asks_the_grpc_health_service_for_the_scoring_service(service_name):
    code = compose_healthcheck_code(service_name)

    compile(code, f"{service_name} healthcheck", "exec")
    assert re.search(rf"HealthCheckRequest\(service=([\"']){re.escape(SERVICE_NAME)}\1\)", code)
    port = dockerfile_env()["LOGIT_SERVICE_PORT"]
    assert f"127.0.0.1:{port}" in code


@pytest.fixture
def health_server():
    """A real gRPC health service on 127.0.0.1 (no model): stands in for a replica's health answers."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


@pytest.mark.parametrize(
    ("status", "healthy"),
    [
        pytest.param(health_pb2.HealthCheckResponse.SERVING, True, id="serving"),
        pytest.param(health_pb2.HealthCheckResponse.NOT_SERVING, False, id="shutting down"),
    ],
)
def test_compose_healthcheck_exit_code_follows_the_health_status(health_server, status, healthy):
    servicer, port = health_server
    servicer.set(SERVICE_NAME, status)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)  # only the named service decides
    code = compose_healthcheck_code("logit-a").replace("127.0.0.1:50051", f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in code

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert (done.returncode == 0) == healthy, done.stderr


def test_compose_healthcheck_fails_when_nothing_listens():
    code = compose_healthcheck_code("logit-a").replace("127.0.0.1:50051", "127.0.0.1:1")

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode != 0


def test_compose_redis_is_healthy_before_the_replicas_start():
    services = compose_services()

    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in REPLICA_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in services["example-trainer"]["depends_on"]:
        assert name in REPLICA_SERVICES


# --- the image --------------------------------------------------------------------------------------


def test_image_runs_the_cli_as_a_non_root_user():
    assert dockerfile_values("FROM") == ["python:3.11-slim"]
    assert dockerfile_exec_form("ENTRYPOINT") == ["logit-service"]
    assert dockerfile_exec_form("CMD") == ["serve"]
    (user,) = dockerfile_values("USER")
    assert user.partition(":")[0] not in {"root", "0"}
    env = dockerfile_env()
    assert (env["LOGIT_SERVICE_HOST"], env["LOGIT_SERVICE_PORT"], env["LOGIT_SERVICE_SNAPSHOT_DIR"]) == (
        "0.0.0.0", "50051", "/snapshots"
    )
    assert env["LOGIT_SERVICE_PORT"] in dockerfile_values("EXPOSE")[0].split()


def test_image_installs_the_chosen_torch_before_the_server_extra():
    args = dict(shlex.split(a)[0].partition("=")[::2] for a in dockerfile_values("ARG"))
    runs = dockerfile_values("RUN")
    torch_run = next(i for i, r in enumerate(runs) if "${TORCH_SPEC}" in r)
    package_run = next(i for i, r in enumerate(runs) if "[server]" in r)
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    assert args["TORCH_SPEC"] == "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    # Otherwise the extra's unpinned torch would pull a CUDA build into the CPU image.
    assert torch_run < package_run
    assert "server" in extras


def test_everything_the_image_copies_exists_and_passes_the_ignore_file():
    ignore_lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore_lines if line.startswith("!")}
    copies = [shlex.split(rest) for rest in dockerfile_values("COPY")]

    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source in allowed, f"COPY {source}: excluded by deploy/Dockerfile.dockerignore"


# --- the example trainer --------------------------------------------------------------------------


def test_compose_services_reference_existing_files():
    for name, service in compose_services().items():
        build = service.get("build")
        if build is None:
            continue
        context = REPO_ROOT / build["context"]
        assert context.is_dir(), name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
    for name, service in compose_services(COMPOSE_GPU).items():
        assert (REPO_ROOT / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE


def _module_of(argv: list[str]) -> str:
    assert argv[:2] == ["python", "-m"], f"the trainer should run `python -m <module>`, got {argv}"
    return argv[2]


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_example_trainer_module_is_in_the_repository_and_in_the_image(where):
    if where == "compose":
        argv = compose_services()["example-trainer"]["entrypoint"]
    else:
        (job,) = k8s_find("Job")
        (container,) = pod_spec(job)["containers"]
        argv = container["command"]
    module = _module_of(argv)
    relative = module.replace(".", "/") + ".py"
    copied = {dest.rstrip("/") + "/" + Path(src).name for *srcs, dest in
              (shlex.split(r) for r in dockerfile_values("COPY")) for src in srcs}

    assert (REPO_ROOT / relative).is_file()
    # `python -m` resolves from the working directory, which is where the image puts deploy/.
    assert f"{dockerfile_workdir()}/{relative}" in copied


def test_example_trainer_imports_cleanly_and_refuses_missing_settings(capsys):
    module = importlib.import_module(_module_of(compose_services()["example-trainer"]["entrypoint"]))

    assert module.main({"LOGIT_TARGETS": "127.0.0.1:1"}) == 2
    assert "LOGIT_SNAPSHOT_DIR" in capsys.readouterr().err


def test_compose_trainer_targets_every_replica_and_shares_their_volume(monkeypatch):
    module = importlib.import_module("deploy.example_trainer")
    trainer = compose_services()["example-trainer"]
    settings = module.TrainerSettings.from_env(environment_of(trainer))
    replicas = {r.name.rpartition(":")[2]: start_config(r, monkeypatch) for r in compose_replicas(COMPOSE)}

    assert set(settings.targets) == {f"{name}:{config.port}" for name, config in replicas.items()}
    assert "snapshots:" + str(settings.snapshot_dir) in trainer["volumes"]
    assert {config.snapshot_dir for config in replicas.values()} == {settings.snapshot_dir}


def test_k8s_trainer_targets_every_pod_and_mounts_the_shared_claim():
    module = importlib.import_module("deploy.example_trainer")
    (job,) = k8s_find("Job")
    (container,) = pod_spec(job)["containers"]
    settings = module.TrainerSettings.from_env({e["name"]: e["value"] for e in container["env"]})
    (statefulset,) = k8s_find("StatefulSet", "logit-service")
    name = statefulset["metadata"]["name"]
    service, replicas = statefulset["spec"]["serviceName"], statefulset["spec"]["replicas"]

    assert set(settings.targets) == {f"{name}-{i}.{service}:50051" for i in range(replicas)}
    (mount,) = container["volumeMounts"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_spec(job)["volumes"]}
    assert mount["mountPath"] == str(settings.snapshot_dir)
    assert claims[mount["name"]] == "snapshots"


# --- Kubernetes wiring -------------------------------------------------------------------------------


def test_k8s_snapshots_claim_is_shared_read_write_by_every_replica():
    (claim,) = k8s_find("PersistentVolumeClaim", "snapshots")
    (statefulset,) = k8s_find("StatefulSet", "logit-service")
    volumes = pod_spec(statefulset)["volumes"]

    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v} == {"snapshots"}
    assert "volumeClaimTemplates" not in statefulset["spec"]  # one volume for all, not one per pod


def test_k8s_headless_service_selects_the_replicas():
    (statefulset,) = k8s_find("StatefulSet", "logit-service")
    (service,) = k8s_find("Service", statefulset["spec"]["serviceName"])
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    (container,) = pod_spec(statefulset)["containers"]

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert container["args"] == ["serve"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_k8s_pods_run_as_the_image_user():
    (user,) = dockerfile_values("USER")
    uid = int(user.partition(":")[0])
    for doc in k8s_find("StatefulSet", "logit-service") + k8s_find("Job"):  # Redis runs its own image's user
        context = pod_spec(doc)["securityContext"]
        # Same uid everywhere, and fsGroup so a fresh shared volume is writable by it.
        assert (context["runAsUser"], context["fsGroup"]) == (uid, uid), doc["metadata"]["name"]


# --- Redis persistence -------------------------------------------------------------------------------


def _redis_flags(argv: list[str]) -> dict[str, str]:
    assert argv[0] == "redis-server", argv
    flags = argv[1:]
    return {flags[i].removeprefix("--"): flags[i + 1] for i in range(0, len(flags), 2)}


def test_k8s_redis_appends_to_a_file_on_a_claim_of_its_own():
    (statefulset,) = k8s_find("StatefulSet", "redis")
    (container,) = pod_spec(statefulset)["containers"]
    flags = _redis_flags(container["args"])
    templates = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    (mount,) = container["volumeMounts"]

    assert not k8s_find("Deployment", "redis")  # a Deployment would get no volume of its own
    assert flags["appendonly"] == "yes" and flags["appendfsync"] in {"always", "everysec"}
    assert flags.get("save") != ""  # `--save ""` is harmless with AOF, but says "no persistence"
    assert mount["mountPath"] == flags["dir"]
    assert templates[mount["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert statefulset["spec"]["replicas"] == 1


def test_compose_redis_appends_to_a_file_on_a_named_volume():
    services = compose_services()
    redis = services["redis"]
    flags = _redis_flags(redis["command"])
    volumes = dict(v.split(":", 1)[::-1] for v in redis["volumes"])

    assert flags["appendonly"] == "yes" and flags["appendfsync"] in {"always", "everysec"}
    assert volumes[flags["dir"]] in yaml.safe_load(COMPOSE.read_text())["volumes"]
