"""`pollen demo` empties only a folder that an earlier demo made, never a user's folder."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pollen.cli.demo_cmd import MARKER, prepare_workdir
from pollen.cli.main import cli
from tests.conftest import REPO_ROOT


def test_the_demo_refuses_a_folder_it_did_not_make_and_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "thesis.txt").write_text("four years of work")

    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "--dir",
            str(REPO_ROOT / "examples" / "quickstart-pytorch"),
            "--workdir",
            str(tmp_path),
            "--insecure",
        ],
    )

    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --workdir {tmp_path} is not empty")
    assert len(result.output.strip().splitlines()) == 1
    assert (tmp_path / "thesis.txt").read_text() == "four years of work"


def test_a_folder_of_an_earlier_demo_is_emptied_and_marked(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    prepare_workdir(workdir)
    (workdir / "runs" / "1").mkdir(parents=True)

    assert prepare_workdir(workdir) == workdir
    assert [p.name for p in workdir.iterdir()] == [MARKER]


def test_a_demo_folder_from_before_the_marker_is_recognised(tmp_path: Path) -> None:
    for name in ("credentials", "logs", "runs", "superlink.db.blobs"):
        (tmp_path / name).mkdir()
    for name in ("superlink.db", "superlink.db-wal", "superlink.db.lock"):
        (tmp_path / name).write_text("")

    prepare_workdir(tmp_path)

    assert [p.name for p in tmp_path.iterdir()] == [MARKER]


def test_a_new_or_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (prepare_workdir(tmp_path / "new" / "demo") / MARKER).exists()
    assert (prepare_workdir(tmp_path / "empty") / MARKER).exists()
