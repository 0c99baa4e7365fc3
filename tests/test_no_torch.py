"""numpy_mvit2 runs with no deep-learning framework importable.

A child process installs an import hook that refuses torch, transformers and timm, then loads a
checkpoint folder and runs all three models. The parent (which has torch) checks the child's
logits against transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from import_blocker import BLOCKER
from reference import make_reference, relative_error, run_reference, save_reference

torch = require("torch")
pytestmark = pytest.mark.slow  # (the quick subset, -m "not slow", leaves this module out: test_cli.py::test_cli_runs_without_torch and test_torch_files.py::test_reads_without_torch_importable keep the property there)

CHILD = BLOCKER + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker did not work")

    from numpy_mvit2 import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, MobileViTV2Model, MobileViTV2Config

    args = json.loads(sys.argv[1])
    x = np.load(args["pixels"])
    cls = MobileViTV2ForImageClassification.from_pretrained(args["classification"])
    seg = MobileViTV2ForSemanticSegmentation.from_pretrained(args["segmentation"])
    base = MobileViTV2Model.from_pretrained(args["classification"])
    random_model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=0)
    np.savez(
        args["out"],
        cls=cls(x).logits,
        seg=seg(x).logits,
        base=base(x).pooler_output,
        random=random_model(x).logits,
    )
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "timm"))
    assert not loaded, loaded
    print("ok")
    """
)


def test_forward_pass_without_torch(tmp_path):
    from numpy_mvit2 import MobileViTV2Config

    config = MobileViTV2Config(width_multiplier=0.5, num_labels=5, output_stride=16)
    folders, refs = {}, {}
    for head in ("classification", "segmentation"):
        refs[head] = make_reference(config, head, seed=21)
        folders[head] = tmp_path / head
        save_reference(refs[head], folders[head])
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 96, 64)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", x)
    args = {**{k: str(v) for k, v in folders.items()}, "pixels": str(tmp_path / "pixels.npy"), "out": str(tmp_path / "out.npz")}
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, cwd=repo_root, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]

    out = np.load(tmp_path / "out.npz")
    assert relative_error(out["cls"], run_reference(refs["classification"], x).logits) <= 2e-5
    assert relative_error(out["seg"], run_reference(refs["segmentation"], x).logits) <= 2e-5
    base = run_reference(refs["classification"].mobilevitv2, x).pooler_output
    assert relative_error(out["base"], base) <= 2e-5
    assert out["random"].shape == (2, 2) and np.isfinite(out["random"]).all()
