"""Bad input to the `pollen` command: one line naming the cause and the fix, and an exit code."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pollen.cli.local_federation import pollen_command
from pollen.cli.main import cli
from tests.conftest import APPS_DIR, free_port


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def run_superlink(database: Path, *options: str) -> tuple[int, str]:
    """``pollen superlink --insecure`` on OS-chosen loopback ports with state in
    ``database``, and ``options``."""
    return run(
        "superlink",
        "--insecure",
        "--fleet-api-address",
        "127.0.0.1:0",
        "--driver-api-address",
        "127.0.0.1:0",
        "--database",
        str(database),
        *options,
    )


def assert_one_line_error(output: str, *fragments: str) -> None:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("app", "fragments"),
    [
        ("nothere:app", ["module 'nothere' not found"]),
        ("numpy_apps:missing", ["has no attribute 'missing'"]),
        ("numpy_apps:server_app", ["is a ServerApp, not a ClientApp"]),
        ("no-colon", ["is not MODULE:ATTRIBUTE"]),
    ],
)
def test_supernode_app_that_cannot_be_loaded(app: str, fragments: list[str]) -> None:
    code, output = run("supernode", app, "--insecure", "--dir", str(APPS_DIR))
    assert code == 2
    assert_one_line_error(output, *fragments)


def test_serverapp_app_of_the_wrong_kind() -> None:
    code, output = run("serverapp", "numpy_apps:app", "--insecure", "--dir", str(APPS_DIR))
    assert code == 2
    assert_one_line_error(output, "is a ClientApp, not a ServerApp")


def test_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, output = run("supernode", "client:app", "--insecure", "--dir", str(missing))
    assert code == 2
    assert_one_line_error(output, f"--dir {missing}: no such directory")


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:", "host:99999", ":9092"])
def test_unparsable_address(address: str, tmp_path: Path) -> None:
    code, output = run(
        "superlink",
        "--insecure",
        "--fleet-api-address",
        address,
        "--database",
        str(tmp_path / "s.db"),
    )
    assert code == 2
    assert_one_line_error(output, "--fleet-api-address", "is not HOST:PORT")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run(
            "superlink",
            "--insecure",
            "--driver-api-address",
            f"127.0.0.1:{port}",
            "--fleet-api-address",
            "127.0.0.1:0",
            "--database",
            str(tmp_path / "s.db"),
        )
    assert code == 2
    assert_one_line_error(
        output, f"--driver-api-address 127.0.0.1:{port}: cannot listen there (address already in"
    )
    assert "SuperLink stopped" not in output  # it never started
    assert list(tmp_path.iterdir()) == []  # a refused start leaves no database behind


def test_port_in_use_is_one_line_without_grpc_log_lines(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            pollen_command(
                "superlink",
                "--insecure",
                "--fleet-api-address",
                f"127.0.0.1:{port}",
                "--driver-api-address",
                "127.0.0.1:0",
                "--database",
                str(tmp_path / "s.db"),
            ),
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"},
        )
    assert result.returncode == 2
    # neither gRPC's "E1204 ... add_port.cc] Failed to add port" nor "SuperLink stopped"
    assert result.stderr.splitlines() == [
        f"error: --fleet-api-address 127.0.0.1:{port}: cannot listen there (address already in "
        "use); stop what uses it or choose another --fleet-api-address"
    ]


def test_a_superlink_refused_at_start_leaves_no_database(tmp_path: Path) -> None:
    (tmp_path / "keys.csv").write_text("")
    code, output = run(
        "superlink",
        "--insecure",
        "--auth-list-public-keys",
        str(tmp_path / "keys.csv"),
        "--fleet-api-address",
        "127.0.0.1:0",
        "--driver-api-address",
        "127.0.0.1:0",
        "--database",
        str(tmp_path / "s.db"),
    )
    assert code == 2
    assert_one_line_error(output, "client authentication needs TLS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.csv"]


@pytest.mark.parametrize(
    "command", [["superlink"], ["supernode", "client:app"], ["serverapp", "server:app"]]
)
def test_plaintext_without_insecure_is_refused(command: list[str]) -> None:
    code, output = run(*command)
    assert code == 2
    assert_one_line_error(output, "--insecure")


def test_malformed_node_config() -> None:
    code, output = run(
        "supernode",
        "numpy_apps:app",
        "--insecure",
        "--dir",
        str(APPS_DIR),
        "--node-config",
        "partition-id",
    )
    assert code == 2
    assert_one_line_error(output, "--node-config", "is not key=value")


def test_database_in_a_missing_directory(tmp_path: Path) -> None:
    code, output = run_superlink(tmp_path / "no" / "s.db")
    assert code == 2
    assert_one_line_error(output, "does not exist")


def test_serverapp_gives_up_when_the_superlink_is_unreachable() -> None:
    code, output = run(
        "serverapp",
        "numpy_apps:server_app",
        "--insecure",
        "--dir",
        str(APPS_DIR),
        "--superlink",
        f"127.0.0.1:{free_port()}",
        "--connect-timeout",
        "0.3",
    )
    assert code == 1
    assert_one_line_error(output, "did not answer within 0.3 s")


def test_two_superlinks_on_one_database(tmp_path: Path) -> None:
    from pollen.superlink.sqlite_state import SqliteState

    first = SqliteState(tmp_path / "s.db")
    try:
        code, output = run_superlink(tmp_path / "s.db")
    finally:
        first.close()
    assert code == 2
    assert_one_line_error(output, "is in use by another SuperLink", f"pid {os.getpid()}")
    SqliteState(tmp_path / "s.db").close()  # free again once the first one closed


@pytest.mark.parametrize(
    ("app", "fragment"),
    [
        ("bad_rounds:app", "ServerConfig(num_rounds=0): must be an int of at least 1"),
        ("bad_fraction:app", "FedAvg(fraction_fit=1.5): must be in (0, 1]"),
    ],
)
def test_a_server_app_configured_out_of_range(app: str, fragment: str) -> None:
    code, output = run("serverapp", app, "--insecure", "--dir", str(APPS_DIR))
    assert code == 2
    assert_one_line_error(output, fragment)


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("lr=fast", "--run-config lr='fast': expected a float like 0.1"),
        ("local-epochs=1.5", "--run-config local-epochs=1.5: expected an int like 2"),
        ("augment=1", "--run-config augment=1: expected a bool like False"),
        ("momentum=0.9", "--run-config momentum: not a setting of this app"),
    ],
)
def test_run_config_of_the_wrong_type_or_unknown(setting: str, fragment: str) -> None:
    code, output = run(
        "serverapp",
        "configured_server:app",
        "--insecure",
        "--dir",
        str(APPS_DIR),
        "--run-config",
        setting,
    )
    assert code == 2
    assert_one_line_error(output, fragment)


def test_run_config_overrides_merge_with_the_declared_defaults() -> None:
    from tests.apps.configured_server import app

    merged = app.merged_run_config({"lr": 1, "optimizer": 3})
    assert merged == {"lr": 1.0, "local-epochs": 2, "optimizer": "3", "augment": False}


def test_node_config_with_a_semicolon_for_a_comma_is_refused() -> None:
    # issue 12: partition-id became the string "0;num-partitions=2" and every round failed
    code, output = run(
        "supernode",
        "numpy_apps:app",
        "--insecure",
        "--dir",
        str(APPS_DIR),
        "--node-config",
        "partition-id=0;num-partitions=2",
    )
    assert code == 2
    assert_one_line_error(
        output,
        "--node-config partition-id=0;num-partitions=2: the value '0;num-partitions=2'",
        "separate settings with commas (partition-id=0,num-partitions=2)",
    )


def test_a_run_config_key_given_twice_is_refused() -> None:
    code, output = run(
        "serverapp",
        "configured_server:app",
        "--insecure",
        "--dir",
        str(APPS_DIR),
        "--run-config",
        "lr=0.1,lr=0.2",
    )
    assert code == 2
    assert_one_line_error(output, "--run-config lr: given twice (lr=0.1 and lr=0.2)")


def test_the_cifar_example_refuses_a_misspelt_run_config_key() -> None:
    # issue 12: its README suggests local-epochs=2; epochs=2 was ignored without a word
    example = Path(__file__).parent.parent / "examples" / "client-authentication-pytorch"
    code, output = run(
        "serverapp", "server:app", "--insecure", "--dir", str(example), "--run-config", "epochs=2"
    )
    assert code == 2
    assert_one_line_error(
        output,
        "--run-config epochs: not a setting of this app; its settings are alpha, data-path, "
        "local-epochs, partitioning",
    )


def test_run_config_keys_of_an_app_that_declares_none_are_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pollen.server import ServerApp

    app = ServerApp()
    with caplog.at_level("WARNING", logger="pollen.server.server_app"):
        merged = app.merged_run_config({"epochs": 2, "lr": 0.1})
        assert app.merged_run_config(merged) == merged  # the CLI checks, then the run does
    assert merged == {"epochs": 2, "lr": 0.1}  # passed on as given
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("--run-config epochs, lr: this ServerApp declares no settings")
    assert "ServerApp(..., run_config={...})" in warning


@pytest.mark.parametrize("age", ["soon", "7 days", "-1d"])
def test_prune_with_an_age_that_is_not_one(age: str) -> None:
    code, output = run("runs", "prune", "--older-than", age, "--insecure")
    assert code == 2
    assert_one_line_error(output, "is not an age; write e.g. 7d")


@pytest.mark.parametrize("age", ["7", "1.5"])
def test_prune_with_an_age_without_its_unit_is_refused(age: str) -> None:
    # issue 12: "7" was taken for 7 seconds, which deletes nearly every finished run
    code, output = run("runs", "prune", "--older-than", age, "--insecure")
    assert code == 2
    assert_one_line_error(output, f"--older-than '{age}' has no unit; write {age}d (days)")
