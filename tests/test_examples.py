"""The study scripts in examples/studies run for hours on real data, so no test runs them whole; each must at
least import: every name it takes from samcache must exist."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

STUDIES = Path(__file__).resolve().parents[1] / "examples" / "studies"
SCRIPTS = sorted(p.stem for p in STUDIES.glob("*.py") if p.stem not in ("common", "nuclei_common"))


def test_every_study_has_a_script():
    assert SCRIPTS == ["ais", "amg", "cells", "ct_prompts", "em_mito", "weak_labels"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_study_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(STUDIES))
    module = importlib.import_module(name)
    assert callable(module.main) and module.__doc__.strip()
