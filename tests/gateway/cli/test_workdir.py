"""A run's temporary folder: removed when the run ends well, kept and named when it fails,
is stopped, or is asked to keep it."""

from __future__ import annotations

import shutil

import pytest

from gateway.cli.workdir import work_folder


def test_a_run_that_ends_well_removes_its_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with work_folder("geogate-test-") as work:
        (work / "a.log").write_text("fine")
    assert work.name.startswith("geogate-test-") and not work.exists()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("stop", [RuntimeError("failed"), KeyboardInterrupt()])
def test_a_run_that_fails_or_is_stopped_keeps_it_and_says_where(
    stop: BaseException, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(type(stop)), work_folder("geogate-test-", what="test: logs") as work:
        (work / "a.log").write_text("what went wrong")
        raise stop
    assert (work / "a.log").read_text() == "what went wrong"
    assert capsys.readouterr().out == f"test: logs kept in {work}\n"
    shutil.rmtree(work)


def test_asked_to_keep_it_keeps_it(capsys: pytest.CaptureFixture[str]) -> None:
    with work_folder("geogate-test-", keep=True) as work:
        pass
    assert work.is_dir() and capsys.readouterr().out == f"logs kept in {work}\n"
    shutil.rmtree(work)
