"""deploy/ cannot run here (no Docker engine, no cluster), so check what can be checked: the
files parse, and the commands, settings, ports, probes and secrets they name are the real ones
(the same commands the README uses)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml

from relay.cli import build_parser
from relay.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def parses_as_relay_command(argv: list[str]) -> None:
    """The real CLI parser accepts argv (it exits on anything it does not know)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"not a relay command: relay {' '.join(argv)}") from exc


def assert_setting(name: str, value: str | None = None) -> None:
    """A RELAY_* variable that exists, and (when given) a value it accepts."""
    assert name.startswith("RELAY_"), name
    field = name.removeprefix("RELAY_").lower()
    assert field in Settings.model_fields or name == "RELAY_ENV_FILE", f"no setting {name}"
    if value is not None and field in Settings.model_fields:
        with patch.dict(os.environ, {name: value}, clear=True):
            load_settings()  # read exactly as the daemon reads it; raises on a bad value


def grace_seconds() -> float:
    return float(Settings.model_fields["shutdown_grace_seconds"].default)


def listen_port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_kubernetes_has_every_object(manifests: dict[str, dict[str, Any]]) -> None:
    assert set(manifests) == {"Deployment", "Secret", "Service", "PodDisruptionBudget"}


def test_deployment_runs_two_replicas_of_the_real_commands(
    manifests: dict[str, dict[str, Any]],
) -> None:
    spec = manifests["Deployment"]["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    [init] = pod["initContainers"]
    [main] = pod["containers"]
    parses_as_relay_command(init["args"])
    parses_as_relay_command(main["args"])
    assert (init["args"], main["args"]) == (["migrate"], ["run"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > grace_seconds()


def test_probes_and_ports_match_the_http_server(manifests: dict[str, dict[str, Any]]) -> None:
    [main] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    [port] = main["ports"]
    assert port["containerPort"] == listen_port(env["RELAY_HTTP_LISTEN"])
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    service_port = manifests["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == port["name"]


def test_environment_names_real_settings_and_existing_secrets(
    manifests: dict[str, dict[str, Any]],
) -> None:
    secret_keys = set(manifests["Secret"]["stringData"])
    secret_name = manifests["Secret"]["metadata"]["name"]
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    from_secret = set()
    for container in pod["containers"] + pod["initContainers"]:
        for env in container["env"]:
            assert_setting(env["name"], env.get("value"))
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret_name
                assert ref["key"] in secret_keys
                from_secret.add(env["name"])
    assert {"RELAY_DATABASE_URL", "RELAY_ADMIN_TOKEN"} <= from_secret


def test_selectors_match_the_pods(manifests: dict[str, dict[str, Any]]) -> None:
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert manifests["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items()
        <= labels.items()
    )
    assert manifests["Service"]["spec"]["selector"].items() <= labels.items()
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


# -- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_postgres_the_relay_and_the_sink(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "sink", "relay"}
    for name in ("migrate", "sink", "relay"):
        parses_as_relay_command(services[name]["command"])
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["relay"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_settings_are_valid(compose: dict[str, Any]) -> None:
    relay = compose["services"]["relay"]
    for name, value in relay["environment"].items():
        assert_setting(name, value)
    _host_port, container_port = relay["ports"][0].split(":")
    assert int(container_port) == listen_port(relay["environment"]["RELAY_HTTP_LISTEN"])
    sink_port = compose["services"]["sink"]["command"][-3]
    overrides = relay["environment"]["RELAY_ENDPOINT_OVERRIDES"]
    assert f"http://sink:{sink_port}" in overrides


# -- systemd -----------------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "relay.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            entries.setdefault(key, []).append(value)
    return entries


def test_systemd_unit_runs_the_real_commands() -> None:
    unit = _unit()
    for key in ("ExecStartPre", "ExecStart"):
        [command] = unit[key]
        program, *argv = shlex.split(command)
        assert program.endswith("/relay")
        parses_as_relay_command(argv)
    assert unit["KillSignal"] == ["SIGTERM"]
    assert float(unit["TimeoutStopSec"][0]) > grace_seconds()
    assert unit["User"] == ["relay"]


def test_systemd_environment_example_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = (DEPLOY / "systemd" / "relay.env.example").read_text()
    for line in example.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            assert_setting(name, value)


# -- Dockerfile --------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0], line.split(None, 1)[1] if " " in line else "")
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_dockerfile_is_slim_non_root_and_runs_relay() -> None:
    instructions = _dockerfile()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    ops = dict(final)
    assert ops["FROM"] == "python:3.11-slim"
    assert ops["USER"] not in ("0", "root")
    assert ops["ENTRYPOINT"] == '["relay"]'
    assert ops["CMD"] == '["run"]'
    parses_as_relay_command(["run"])
    listen = re.search(r"RELAY_HTTP_LISTEN=(\S+)", ops["ENV"])
    assert listen is not None
    assert ops["EXPOSE"] == str(listen_port(listen[1]))
    assert "/healthz" in ops["HEALTHCHECK"]
    assert any(
        op == "RUN" and "pip install" in arg and arg.endswith(" .") for op, arg in instructions
    )


# -- the README's commands ---------------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """Every `relay …` command in the README's shell blocks, as argv (synopsis brackets and
    alternatives reduced to one concrete form)."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line)
            words = shlex.split(line, comments=True)
            while words and "=" in words[0]:
                words.pop(0)  # VAR=value prefixes
            if not words or words[0] != "relay":
                continue
            argv = []
            for word in words[1:]:
                if word in ("<", "<<<", ">", "|", "&&", ";"):
                    break
                argv.append(word.split("|")[0])
            commands.append(argv)
    return commands


def test_every_relay_command_in_the_readme_is_real() -> None:
    commands = readme_commands()
    assert len(commands) > 15
    for argv in commands:
        parses_as_relay_command(argv)


def test_deploy_uses_the_readme_production_commands() -> None:
    readme = {tuple(argv[:1]) for argv in readme_commands()}
    assert {("migrate",), ("run",)} <= readme
