"""Paths with ~ in the settings a user writes, and files written whole or not at all."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from smx.errors import UserError
from smx.paths import expand_home, written_whole
from tests.conftest import REPO, smx_command

NO_SUCH_USER = "~smx-no-such-user"


def test_a_home_directory_is_expanded_and_an_unknown_user_is_named() -> None:
    assert expand_home("~/runs", "--store") == Path.home() / "runs"
    assert expand_home("/data/mnist", "data.root") == Path("/data/mnist")
    with pytest.raises(UserError) as raised:
        expand_home(f"{NO_SUCH_USER}/runs", "--store")
    assert str(raised.value).startswith(f"--store: cannot find the home directory '{NO_SUCH_USER}'")


@pytest.mark.parametrize(("variable", "arguments"), [
    ("SMX_STORE", ("status",)),
    ("SMX_CONFIG", ("validate", str(REPO / "experiments" / "quickstart.toml"))),
])
def test_an_unknown_user_in_a_setting_exits_2_naming_the_setting(variable: str, arguments: tuple[str, ...],
                                                                 tmp_path: Path) -> None:
    environment = {**os.environ, variable: f"{NO_SUCH_USER}/x"}
    result = subprocess.run(smx_command(*arguments), capture_output=True, text=True, env=environment, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{variable}" in result.stderr and NO_SUCH_USER in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_data_root_with_an_unknown_user_names_the_spec_and_key(tmp_path: Path) -> None:
    spec = tmp_path / "fashion.toml"
    spec.write_text((REPO / "experiments" / "quickstart.toml").read_text().replace(
        'dataset = "mnist-mini"', f'dataset = "fashion-mnist"\nroot = "{NO_SUCH_USER}/data"'))
    result = subprocess.run(smx_command("validate", str(spec)), capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2
    assert f"{spec}: data.root: cannot find the home directory '{NO_SUCH_USER}'" in result.stderr


def test_embedded_data_needs_no_data_root(tmp_path: Path) -> None:
    environment = {**os.environ, "SMX_DATA": f"{NO_SUCH_USER}/data"}
    result = subprocess.run(smx_command("validate", str(REPO / "experiments" / "quickstart.toml")),
                            capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_file_written_whole_appears_only_complete_and_never_after_an_error(tmp_path: Path) -> None:
    target = tmp_path / "results.tsv"
    target.write_text("the previous run's log\n")
    with pytest.raises(OSError):
        with written_whole(target) as partial:
            partial.write_text("half of it")
            raise OSError("disk full")
    assert list(tmp_path.iterdir()) == [target] and target.read_text() == "the previous run's log\n"
    with written_whole(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".results.tsv.")
        partial.write_text("all of it\n")
        assert target.read_text() == "the previous run's log\n"  # replaced only once complete
    assert list(tmp_path.iterdir()) == [target] and target.read_text() == "all of it\n"


def test_writing_a_file_whole_removes_the_partial_files_that_killed_writers_of_it_left(tmp_path: Path) -> None:
    import os
    import time

    from smx.paths import LEFTOVER_PARTIAL_SECONDS

    target = tmp_path / "results[v2].tsv"
    killed, writing, other, longer = (tmp_path / name for name in (".results[v2].tsv.4242.0a1b2c3d.part",
                                                                    ".results[v2].tsv.4343.0a1b2c3d.part",
                                                                    ".other.tsv.4242.0a1b2c3d.part",
                                                                    ".results[v2].tsv.bak.4242.0a1b2c3d.part"))
    for partial in (killed, writing, other, longer):
        partial.write_text("half of it")
    long_ago = time.time() - LEFTOVER_PARTIAL_SECONDS - 60
    for partial in (killed, other, longer):
        os.utime(partial, (long_ago, long_ago))
    with written_whole(target) as partial:
        partial.write_text("all of it\n")
    # Another writer's file of the same target, still being written, and other targets' stay.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [target.name, writing.name, other.name, longer.name])
