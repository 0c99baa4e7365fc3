"""Every notebook in ``notebooks/`` runs top to bottom on a clean kernel.

The kernel is this interpreter (``sys.executable``), started through a kernel spec written to a
temporary folder, with the repository root first on its ``PYTHONPATH``: the test does not depend on
which kernels the machine has installed, and the notebooks import this checkout's ``numpy_mvit2``.
The notebooks assert their own bars, so a failing assertion in a cell fails the test; none of
them is a time (notebook 02 asserts the fitted slopes of counted multiply-adds and of peak memory,
and only draws the wall time).

Run as a script to execute the notebooks and save their outputs in place (what is committed)::

    python tests/test_notebooks.py [notebooks/02_separable_attention.ipynb ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_PER_CELL = 600
KERNEL_NAME = "numpy-mvit2-test"


def execute(path: Path, kernel_dir: Path):
    """Execute the notebook at ``path`` in a fresh kernel; return the executed notebook."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    spec_dir = kernel_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "numpy_mvit2 (test)",
        "language": "python",
        "env": {"PYTHONPATH": pythonpath},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, km=manager, timeout=TIMEOUT_PER_CELL,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return notebook


@pytest.mark.slow  # a kernel each, minutes in all; the two tests below check the saved notebooks quickly
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib", "torch", "transformers"):
        require(module)
    notebook = execute(path, tmp_path)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells)
    images = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no picture"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_architecture.ipynb",
        "02_separable_attention.ipynb",
        "03_crosscheck_pytorch.ipynb",
        "04_segmentation.ipynb",
    ]


def test_saved_notebooks_carry_their_outputs():
    """What is committed reads on GitHub: every code cell has run, and the pictures are saved."""
    import nbformat

    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code_cells = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code_cells), f"{path.name} is saved unexecuted"
        assert any("image/png" in o.get("data", {}) for c in code_cells for o in c.get("outputs", [])), path.name


if __name__ == "__main__":
    import nbformat

    paths = [Path(p).resolve() for p in sys.argv[1:]] or NOTEBOOKS
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            start = time.perf_counter()
            executed = execute(path, Path(tmp))
            nbformat.write(executed, path)
            print(f"{path.name}: executed and saved in {time.perf_counter() - start:.0f} s")
