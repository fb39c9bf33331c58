"""daskmri's DICOM readers against pydicom, as a table of outcomes::

    python benchmarks/differential.py [--seed 20240624] [--scale 1]

The cases and the rules are those of tests/test_dicom_differential.py (they live in
tests/differential.py): every file pydicom ships, as it is, and 400 seeded mutations
of them (``--scale 5`` makes 2,000; another ``--seed`` other ones). Each row of the
table is an outcome, each column a kind of case. ``identical``: daskmri gave pydicom's
float32 image bit for bit. ``refused: pydicom refuses too``: pydicom raises on the file
(or on its pixels, or its rescale). ``refused by design``: pydicom gives an array that
is not one grey-level frame. ``refused: pydicom gives an image``: daskmri is stricter
than pydicom (listed below the table). Any broken rule (another array, an exception
that is not a one-line DicomError, a header value that is not pydicom's) is listed
and the script exits 1.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.differential

import pydicom

from tests import differential


def table(verdicts: list[differential.Verdict]) -> list[str]:
    """The outcomes (rows) by kind of case (columns), as markdown lines."""
    kinds = ["original", *differential.COUNTS, "regression"]
    counts = collections.Counter((v.outcome, v.kind) for v in verdicts)
    outcomes = sorted({v.outcome for v in verdicts}, key=lambda o: (o != differential.IMAGE, o))
    lines = [
        "| outcome | " + " | ".join(kinds) + " | all |",
        "|---|" + "---:|" * (len(kinds) + 1),
    ]
    for outcome in [*outcomes, "all"]:
        row = [
            sum(n for (o, k), n in counts.items() if k == kind and outcome in (o, "all"))
            for kind in kinds
        ]
        lines.append(f"| {outcome} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=differential.SEED)
    parser.add_argument("--scale", type=int, default=1, help="mutations: 400 x scale")
    args = parser.parse_args()
    counts = {kind: n * args.scale for kind, n in differential.COUNTS.items()}
    start = time.perf_counter()
    cases = differential.cases(seed=args.seed, counts=counts)
    made = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="daskmri-differential-") as work:
        path = Path(work) / "case.dcm"
        verdicts = [differential.check(case, path) for case in cases]
    checked = time.perf_counter() - start - made
    files = sum(case.mutation is None for case in cases)
    print(
        f"pydicom {pydicom.__version__}: {files} files, {len(cases) - files} mutations "
        f"(seed {args.seed}); cases made in {made:.1f} s, checked in {checked:.1f} s\n"
    )
    print("\n".join(table(verdicts)))
    stricter = [v for v in verdicts if v.outcome == differential.STRICTER]
    broken = [v for v in verdicts if v.problems]
    for title, found in (("stricter than pydicom", stricter), ("RULES BROKEN", broken)):
        print(f"\n{title}: {len(found)}")
        for v in found:
            print(f"  {v.case}: {'; '.join(v.problems) or v.reason}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
