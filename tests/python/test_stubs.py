"""The committed type stubs (kvcompress/_core.pyi) are what nanobind's stubgen writes for this build."""

import subprocess
import sys
from pathlib import Path

import pytest

import kvcompress

pytest.importorskip("nanobind")


def test_core_stub_is_current(tmp_path):
    out = tmp_path / "_core.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "kvcompress._core", "-o", str(out)],
                   check=True)
    committed = Path(__file__).resolve().parents[2] / "python" / "kvcompress" / "_core.pyi"
    assert out.read_text() == committed.read_text(), (
        "python/kvcompress/_core.pyi is stale: regenerate it with "
        "`python -m nanobind.stubgen -m kvcompress._core -o python/kvcompress/_core.pyi`")


def test_help_works():
    assert "Expected Attention" in kvcompress.ExpectedAttentionPress.__doc__
    assert "in place" in kvcompress.compress.__doc__
