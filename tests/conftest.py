"""Shared fixtures. Parity data comes from the folder named by MIMO_AUDIO_FIXTURE (default: our copy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

DEFAULT_FIXTURE = Path(__file__).parent / "fixtures" / "reference-tiny"


def fixture_dir() -> Path:
    return Path(os.environ.get("MIMO_AUDIO_FIXTURE", DEFAULT_FIXTURE))


@pytest.fixture(scope="session")
def fixture_path() -> Path:
    path = fixture_dir()
    assert path.is_dir(), f"MIMO_AUDIO_FIXTURE={path} is not a folder"
    return path


@pytest.fixture(scope="session")
def manifest(fixture_path) -> dict:
    return json.loads((fixture_path / "expected" / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def expected(fixture_path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(fixture_path / "expected" / "expected.safetensors"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
