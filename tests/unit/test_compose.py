"""docker-compose.yml is a valid Compose file and describes the production-like stack."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose-spec.json"

EXPECTED_SERVICES = {"nats", "chroma", "gateway", "ingest-worker", "livekit"}


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


def test_compose_file_matches_the_compose_specification(compose: dict) -> None:
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


def test_nats_runs_with_jetstream(services: dict) -> None:
    args = _command_args(services["nats"])
    assert "-js" in args or "--jetstream" in args
    assert services["nats"]["image"].startswith("nats:")


def test_gateway_and_worker_share_duet_environment(services: dict) -> None:
    gateway = {k: v for k, v in _env(services["gateway"]).items() if k.startswith("DUET_")}
    worker = {k: v for k, v in _env(services["ingest-worker"]).items() if k.startswith("DUET_")}
    assert gateway, "the gateway has no DUET_* settings"
    assert gateway == worker
    assert gateway["DUET_NATS_URL"] == "nats://nats:4222"
    assert gateway["DUET_CHROMA_URL"] == "http://chroma:8000"
    assert gateway["DUET_RUN_WORKER"] == "0"


def test_gateway_and_worker_run_the_duet_image(services: dict) -> None:
    assert _command_args(services["gateway"]) == ["serve"]
    assert _command_args(services["ingest-worker"]) == ["ingest-worker"]
    for name in ("gateway", "ingest-worker"):
        assert services[name].get("build") is not None
        assert "env_file" not in services[name]
        assert {"nats", "chroma"} <= set(services[name].get("depends_on") or {})


def test_gateway_publishes_its_port(services: dict) -> None:
    ports = [str(p) for p in services["gateway"].get("ports", [])]
    assert "8080:8080" in ports
