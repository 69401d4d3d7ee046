"""The malloc tuning applies on glibc, once."""
import platform
import sys

import pytest

from autoseg.malloc import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reuse_freed_memory_applies_on_glibc_and_is_idempotent():
    assert reuse_freed_memory() is True
    assert reuse_freed_memory() is True
