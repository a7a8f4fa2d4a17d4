"""The committed type stubs (kvcompress/_core.pyi) are what nanobind's stubgen writes for this build."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvcompress

pytest.importorskip("nanobind")


def _build_independent(stub: str) -> str:
    """The stub without the value of ``cuda_enabled``, the one line that depends on the build (the CUDA
    path compiled or not): its type stays checked."""
    return re.sub(r"^cuda_enabled: bool = (True|False)$", "cuda_enabled: bool = ...", stub, flags=re.M)


def test_core_stub_is_current(tmp_path):
    out = tmp_path / "_core.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "kvcompress._core", "-o", str(out)],
                   check=True)
    committed = Path(__file__).resolve().parents[2] / "python" / "kvcompress" / "_core.pyi"
    assert _build_independent(out.read_text()) == _build_independent(committed.read_text()), (
        "python/kvcompress/_core.pyi is stale: regenerate it with "
        "`python -m nanobind.stubgen -m kvcompress._core -o python/kvcompress/_core.pyi`")


def test_help_works():
    assert "Expected Attention" in kvcompress.ExpectedAttentionPress.__doc__
    assert "in place" in kvcompress.compress.__doc__
