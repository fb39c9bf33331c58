"""daskmri's DICOM readers against pydicom on every file pydicom ships and 400 seeded
mutations of them: pydicom's image bit for bit, or a one-line DicomError; the header
readers give pydicom's values or step aside. The cases and the rules live in
tests/differential.py (benchmarks/differential.py prints the table of outcomes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from . import differential

CASES = differential.cases()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("differential")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_pydicoms_image_or_a_refusal(case, workdir):
    verdict = differential.check(case, workdir / "case.dcm")
    assert verdict.problems == (), verdict
    if case.mutation is None:
        # A file pydicom ships and reads as one grey-level frame is read, not refused.
        assert verdict.outcome != differential.STRICTER, verdict.reason


def test_the_cases_are_every_shipped_file_and_400_real_mutations():
    files = differential.shipped_files()
    originals = [case for case in CASES if case.mutation is None]
    assert [case.path for case in originals] == files
    assert len(files) > 150  # pydicom's own test files, not a stray subset
    mutations = [case for case in CASES if case.mutation is not None]
    assert len(mutations) == sum(differential.COUNTS.values()) + len(differential.regressions())
    assert [case.id for case in differential.cases()] == [case.id for case in CASES]
    for case in mutations:
        assert case.data() != case.path.read_bytes(), case.id


def test_the_regressions_of_issue_24_have_their_outcome(workdir):
    found = {
        case.mutation.detail: differential.check(case, workdir / "regression.dcm")
        for case in differential.regressions()
    }
    outcomes = {detail: verdict.outcome for detail, verdict in found.items()}
    assert outcomes == {
        "issue 24: 8-bit OW big endian": differential.IMAGE,
        "issue 24: vr Rows US->DS": differential.BOTH_REFUSE,
        "issue 24: delete SamplesPerPixel": differential.BOTH_REFUSE,
        "issue 24: empty RescaleSlope": differential.BOTH_REFUSE,
        "issue 24: relabel 1.2.3.4.5": differential.BOTH_REFUSE,
    }
    assert "codecs" not in found["issue 24: relabel 1.2.3.4.5"].reason


def test_the_table_script_runs_the_same_cases():
    """benchmarks/differential.py on the shipped files alone (no mutations)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "differential.py"
    out = subprocess.run(
        [sys.executable, str(script), "--scale", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    files = len(differential.shipped_files())
    regressions = len(differential.regressions())
    assert f"{files} files, {regressions} mutations" in out.stdout
    rows = {line.split(" | ")[0]: line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert rows["| all"].endswith(f"| {files + regressions} |")
    identical_originals = int(rows["| identical"].split(" | ")[1])
    assert identical_originals >= 60  # pydicom 3.0 ships 65 single grey-level frames
    assert "RULES BROKEN: 0" in out.stdout
