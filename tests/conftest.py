"""Shared by every test: a private trust-state directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_trust_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Things keep their trust state in files; never in the developer's home."""
    path = tmp_path_factory.mktemp("trust")
    monkeypatch.setenv("SAFETHING_TRUST_DIR", str(path))
    return path
