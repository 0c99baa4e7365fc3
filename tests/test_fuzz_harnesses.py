"""The atheris harnesses in fuzz/ run, without atheris, over every file of their seed corpus: the
harnesses cannot rot, and every finding turned into a corpus file stays a regression test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
HARNESSES = {"fuzz_checkpoint": "checkpoint", "fuzz_safetensors": "safetensors"}


def load_harness(name: str):
    spec = importlib.util.spec_from_file_location(f"_harness_{name}", FUZZ / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("harness, corpus", HARNESSES.items())
def test_harness_over_its_seed_corpus(harness, corpus):
    seeds = sorted((FUZZ / "corpus" / corpus).iterdir())
    assert len(seeds) >= 10, seeds
    test_one_input = load_harness(harness).TestOneInput
    for seed in seeds:
        test_one_input(seed.read_bytes())  # returns, or raises what the fuzzer would report
