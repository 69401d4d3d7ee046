"""Atomic file replacement: readers never see half a file, and a kill leaves the old one intact."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

# atomic_write's temporaries: ".{name}.{8 hex}.tmp{suffix}", suffix empty or a file ending (".png", ".nii.gz")
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)*")
# min_age_s for folders that other processes may be writing into: a live writer touches its temporary
# every few seconds, so one untouched this long was left by a killed process
UNTOUCHED_S = 300.0


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; when the block succeeds it replaces `path`.

    `suffix` keeps a meaningful ending on the temporary file (writers that pick the format by it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sweep_stale_temporaries(folder: Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove atomic_write temporaries a killed writer left directly in `folder`; return them.

    Only call it where no other process writes into `folder` at the same time (under the run lock),
    or pass `min_age_s` so that a temporary still being written (its mtime is recent) is kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cutoff = time.time() - min_age_s
    removed = []
    for path in sorted(folder.iterdir()):
        if not (_TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink()):
            continue
        with contextlib.suppress(FileNotFoundError):  # its writer may have just finished or been swept too
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed.append(path)
                log.info("removed %s, a temporary file left by an interrupted write", path)
    return removed
