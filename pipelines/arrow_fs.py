"""Hand Ray Data an explicit Arrow filesystem built from fsspec, never a bare URL.

A bare gs:// path makes Arrow resolve credentials itself (it hung for minutes against a
local GCS emulator); wrapping the fsspec filesystem uses exactly the storage
configuration that the rest of nestgen uses.
"""
from __future__ import annotations

from pyarrow.fs import FSSpecHandler, PyFileSystem

from nestgen.storage import url_to_fs


def arrow_filesystem(url: str) -> PyFileSystem:
    fs, _ = url_to_fs(url)
    return PyFileSystem(FSSpecHandler(fs))
