"""The version of auditq this process runs, as its package's metadata states it.

Recorded in each audit's provenance (`auditq_version`). A tree run without being
installed has no metadata: it says so rather than guess.
"""

from importlib.metadata import PackageNotFoundError, version


def _installed() -> str:
    try:
        return version("auditq")
    except PackageNotFoundError:
        return "unknown (not installed)"


AUDITQ_VERSION = _installed()
