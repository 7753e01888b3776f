"""Text from the network never forges a log line: each record stays on one line, its
control characters shown escaped."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from pathlib import Path

from pollen.cli.local_federation import LocalFederation
from pollen.cli.log_lines import OneLineFormatter, one_line
from pollen.server.driver import DriverClient
from pollen.transport.addresses import Address

FORGED = "app\n12:00:00 INFO    node 1 joined with key SHA256:forged\x1b[2K"


def test_control_characters_are_escaped_and_tabs_kept() -> None:
    assert one_line("a\nb\r\x1b[31mc\td\u2028e\x00") == "a\\nb\\r\\x1b[31mc\td\\u2028e\\x00"


def test_a_record_with_a_newline_in_its_arguments_is_one_line_its_traceback_is_not() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "run %s", (FORGED,), None)
        record.exc_info = sys.exc_info()
    first, *traceback = formatter.format(record).splitlines()
    assert first == "INFO run " + one_line(FORGED)
    assert traceback[0] == "Traceback (most recent call last):"


def test_an_app_name_with_a_newline_does_not_forge_a_superlink_log_line(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed")
    fed.start_superlink()
    try:

        async def create() -> int:
            driver = await DriverClient.connect(Address("127.0.0.1", fed.driver_port))
            try:
                return (await driver.create_run(FORGED, {}))[0]
            finally:
                await driver.close()

        run_id = asyncio.run(create())
        assert fed.superlink is not None
        deadline = time.monotonic() + 10
        while f"run {run_id} created" not in fed.superlink.log():
            assert time.monotonic() < deadline, fed.superlink.log()
            time.sleep(0.05)
    finally:
        fed.stop()
    log = fed.superlink.log()
    assert not re.search(r"^12:00:00 INFO", log, re.MULTILINE)
    assert "\x1b" not in log
    assert f"run {run_id} created (app\\n12:00:00 INFO    node 1 joined" in log
