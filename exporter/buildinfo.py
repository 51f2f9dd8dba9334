"""The commit the exporter was built from: for `--version` and `passthrough_exporter_build_info`.

Read once a process, without running git: from the REVISION file the build puts beside this module
(setup.py writes it when a wheel is built from a checkout), else from the .git of the checkout this
package runs from (an editable install, a source tree). "unknown" when neither says, as Prometheus's
own builds say it. Standard library only: setup.py loads this file before any dependency exists.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

UNKNOWN = "unknown"
REVISION_FILE = "REVISION"
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1, or SHA-256 repositories
_MAX_READ = 16 * 1024 * 1024  # packed-refs of a large repository; HEAD and a ref are one line


@functools.cache
def revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        built = _read(here / REVISION_FILE).strip()
        if _SHA.fullmatch(built):
            return built
    except (OSError, UnicodeDecodeError):
        pass
    return git_revision(here.parent) or UNKNOWN


def git_revision(top: Path) -> str | None:
    """The commit checked out at `top` (HEAD, through its branch), or None when `top` is no checkout
    or its .git cannot be read."""
    try:
        return _git_revision(top)
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _git_revision(top: Path) -> str | None:
    dot_git = top / ".git"
    if dot_git.is_file():  # a worktree or a submodule: "gitdir: PATH", relative to `top`
        pointer = _read(dot_git).strip()
        if not pointer.startswith("gitdir:"):
            return None
        gitdir = (top / pointer[len("gitdir:"):].strip()).resolve()
    elif dot_git.is_dir():
        gitdir = dot_git
    else:
        return None
    head = _read(gitdir / "HEAD").strip()
    if _SHA.fullmatch(head):  # detached
        return head
    if not head.startswith("ref: "):
        return None
    ref = head[len("ref: "):].strip()
    if not ref.startswith("refs/") or ".." in ref.split("/"):
        return None
    # A worktree keeps HEAD in its own directory and the branches in the repository's (commondir).
    common = gitdir
    if (gitdir / "commondir").is_file():
        common = (gitdir / _read(gitdir / "commondir").strip()).resolve()
    for base in (gitdir, common):
        if (base / ref).is_file():
            sha = _read(base / ref).strip()
            return sha if _SHA.fullmatch(sha) else None
    if (common / "packed-refs").is_file():
        for line in _read(common / "packed-refs").splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _SHA.fullmatch(sha):
                return sha
    return None


def _read(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read(_MAX_READ)
