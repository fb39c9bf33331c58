"""docs/quickstart.ipynb runs top to bottom (the docs build executes it too)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs the test extra (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="needs the test extra (nbclient)")
    pytest.importorskip("ipykernel", reason="needs the test extra (ipykernel)")
    pytest.importorskip("matplotlib", reason="the notebook draws: needs the plot extra")
    pytest.importorskip("torch", reason="the notebook trains a model: needs the torch extra")
    # The kernel's own temp folder, to see what the notebook leaves there.
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if out.get("output_type") == "stream"
    ]  # fmt: skip
    assert any("steps, loss" in text for text in outputs)
    errors = [
        out for cell in notebook.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if out.get("output_type") == "error"
    ]  # fmt: skip
    assert errors == []
    # Its figures show inline: the masks, a batch, an augmented batch.
    pictures = [
        out for cell in notebook.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if "image/png" in out.get("data", {})
    ]  # fmt: skip
    assert len(pictures) >= 3
    # It removed what it made (torch may keep a compiler cache there: not ours).
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor")] == []
