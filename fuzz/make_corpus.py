"""Write the seed corpus: the small cases of tests/hostile_files.py (valid files and hostile
regressions) and, where torch is installed, a few tiny files from torch.save itself.

    python fuzz/make_corpus.py

Files over ``MAX_SEED`` bytes are left out (libFuzzer sizes its inputs by the largest seed, and
the big floods are pinned by tests/test_hostile_checkpoints.py instead). Findings added by hand
(fuzz/README.md) sit beside these under their own names and are kept.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from hostile_files import SAFETENSORS_CASES, TORCH_CASES

MAX_SEED = 16 * 1024


def torch_seeds() -> dict[str, bytes]:
    try:
        import torch
    except ImportError:
        return {}
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, generator=g)
    state = {"w": base, "t": base.t(), "row": base[1], "h": torch.randn(2, generator=g).half(),
             "bf": torch.randn(3, generator=g).bfloat16(), "i": torch.arange(3), "b": torch.tensor([True, False])}
    seeds = {}
    for name, obj, protocol in (("torch-save-p2", state, 2), ("torch-save-p4", state, 4),
                                ("torch-save-wrapper", {"state_dict": {"w": base}, "epoch": 3}, 2)):
        f = io.BytesIO()
        torch.save(obj, f, pickle_protocol=protocol)
        seeds[name] = f.getvalue()
    return seeds


def main() -> None:
    for folder, cases, extra in (("checkpoint", TORCH_CASES, torch_seeds()), ("safetensors", SAFETENSORS_CASES, {})):
        target = HERE / "corpus" / folder
        target.mkdir(parents=True, exist_ok=True)
        files = {**{name: build() for name, (build, _) in cases.items()}, **extra}
        if folder == "checkpoint":  # the pickles alone too: fuzz_checkpoint.py wraps them in a zip
            files.update({f"pickle-{name}": pkl for name, pkl in map(data_pkl, files.items()) if pkl is not None})
        for name, data in files.items():
            if len(data) <= MAX_SEED:
                (target / name.replace("*", "")).write_bytes(data)


def data_pkl(item: tuple[str, bytes]) -> tuple[str, bytes | None]:
    name, data = item
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            return name, z.read(pkl)
    except Exception:  # noqa: BLE001 -- a hostile zip: no pickle to take from it
        return name, None


if __name__ == "__main__":
    main()
