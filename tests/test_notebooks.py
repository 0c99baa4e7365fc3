"""Every notebook in ``notebooks/`` runs top to bottom on a clean kernel.

The kernel is this interpreter (``sys.executable``), started through a kernel spec written to a
temporary folder, with the repository root first on its ``PYTHONPATH``: the test does not depend on
which kernels the machine has installed, and the notebooks import this checkout's ``numpy_mvit2``.
The notebooks assert their own bars, so a failing assertion in a cell fails the test; none of
them is a time (notebooks 02 and 05 assert the fitted slopes of counted multiply-adds and of peak memory;
02 only draws the wall time).

The pictures must be legible at the size they are saved: a probe cell run first (and removed from
the executed notebook) records every piece of text matplotlib draws, with its size and the dpi it
is drawn at. The test requires at least ``MIN_FONT_SIZE`` points at ``MIN_DPI`` or more (9 pt at 80
dpi is 10 pixels high; pixels = points x dpi / 72), and no axis offset label (such as
``1e-8+4.088741e-1``, the mark of a constant drawn with automatic limits).

Under pytest, the generated checkpoints the notebooks fall back on are made in a temporary folder
(``NUMPY_MVIT2_GENERATED_DIR``), not in the user's cache; run as a script, the kernel uses the
user's cache, as a reader's does.

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
MIN_FONT_SIZE = 9  # points (numpy_mvit2.demo.MIN_FONT_SIZE, what plot_style sets)
MIN_DPI = 80

# Run before the notebook's own cells: wraps matplotlib's Text.draw, which draws every piece of text
# (titles, labels, tick labels, legends, colorbars, annotations), to record what is drawn, at which
# size and dpi, in which code cell (counted by IPython's pre_execute event). The inline backend draws
# each figure as it saves it, so this sees the pictures as saved. Pure Python over public APIs.
# The probe imports nothing heavy: notebook 02 sets BLAS's thread count before NumPy is first
# imported, and matplotlib imports NumPy. So Text.draw is wrapped the moment a cell imports
# matplotlib.text, by an import hook, before any figure of that cell can be drawn.
PROBE = """
import importlib.abc
import importlib.util
import sys

from IPython import get_ipython

_drawn_texts, _code_cell = [], [0]


def _next_cell():
    _code_cell[0] += 1


def _wrap_text_draw(text_module):
    draw = text_module.Text.draw

    def recording_draw(self, renderer, *args, **kwargs):
        text = self.get_text()
        if self.get_visible() and text.strip() and self.figure is not None:
            axes = self.figure.get_axes()
            offset = any(self is ax.xaxis.offsetText or self is ax.yaxis.offsetText for ax in axes)
            _drawn_texts.append((_code_cell[0], text[:60], float(self.get_fontsize()), float(renderer.dpi), offset))
        return draw(self, renderer, *args, **kwargs)

    text_module.Text.draw = recording_draw


class _WrapOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.text":
            return None
        sys.meta_path.remove(self)  # once: find the real module with the other finders
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _wrap_text_draw(module)

        spec.loader.exec_module = exec_and_wrap
        return spec


get_ipython().events.register("pre_execute", _next_cell)
if "matplotlib.text" in sys.modules:  # a kernel that imported it already
    _wrap_text_draw(sys.modules["matplotlib.text"])
else:
    sys.meta_path.insert(0, _WrapOnImport())
"""
REPORT = "import json; print(json.dumps(_drawn_texts))"


def execute(path: Path, kernel_dir: Path, generated_dir: Path | None = None):
    """Execute the notebook at ``path`` in a fresh kernel; return the executed notebook (without the
    probe) and the texts its pictures drew: ``[(cell index, text, points, dpi, is offset label)]``.
    ``generated_dir``: where the kernel keeps generated checkpoints (default: the user's cache, as a
    reader's kernel does)."""
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
    if generated_dir is not None:
        spec["env"]["NUMPY_MVIT2_GENERATED_DIR"] = str(generated_dir)
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    notebook.cells = [nbformat.v4.new_code_cell(PROBE), *cells, nbformat.v4.new_code_cell(REPORT)]
    client = NotebookClient(notebook, km=manager, timeout=TIMEOUT_PER_CELL,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    report = notebook.cells[-1]
    texts = json.loads("".join(o.get("text", "") for o in report.outputs if o.get("name") == "stdout"))
    notebook.cells = cells
    # the probe took execution count 1: number the notebook's own cells from 1, as a reader runs them
    code_cells = [index for index, cell in enumerate(cells) if cell.cell_type == "code"]
    for index in code_cells:
        cell = cells[index]
        if cell.get("execution_count"):
            cell.execution_count -= 1
            for output in cell.outputs:
                if output.get("execution_count"):
                    output.execution_count -= 1
    return notebook, [(code_cells[k - 1] if 0 < k <= len(code_cells) else None, text, size, dpi, offset)
                      for k, text, size, dpi, offset in texts]


def illegible(texts) -> list:
    """The drawn texts below the bar: too small, drawn at too low a dpi, or an axis offset label."""
    return [t for t in texts if t[2] < MIN_FONT_SIZE or t[3] < MIN_DPI or t[4]]


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory):
    """One folder for the generated checkpoints of all six notebooks (most share theirs): the
    test's own, not the user's cache."""
    return tmp_path_factory.mktemp("generated")


@pytest.mark.slow  # a kernel each, minutes in all; the two tests below check the saved notebooks quickly
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, generated_dir):
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib", "torch", "transformers", "sklearn"):
        require(module)
    notebook, texts = execute(path, tmp_path, generated_dir)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells)
    images = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no picture"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert texts, f"{path.name}: the probe saw no text drawn"
    assert not illegible(texts), (f"{path.name}: text under {MIN_FONT_SIZE} pt, drawn under {MIN_DPI} dpi, or an "
                                  f"offset label (cell index, text, points, dpi, offset): {illegible(texts)}")


def test_there_are_six_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_architecture.ipynb",
        "02_separable_attention.ipynb",
        "03_crosscheck_pytorch.ipynb",
        "04_segmentation.ipynb",
        "05_gradients.ipynb",
        "06_finetune.ipynb",
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
            executed, texts = execute(path, Path(tmp))
            nbformat.write(executed, path)
            print(f"{path.name}: executed and saved in {time.perf_counter() - start:.0f} s; "
                  f"smallest text {min(t[2] for t in texts):g} pt at {min(t[3] for t in texts):g} dpi")
            for cell, text, size, dpi, offset in illegible(texts):
                print(f"  cell {cell}: {text!r} {size:g} pt at {dpi:g} dpi{' (an offset label)' if offset else ''}")
