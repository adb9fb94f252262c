"""
The version of this server, from one source of truth: C{version} in the
C{[metadata]} of C{setup.cfg}.

An installed copy reads it from its distribution's metadata
(C{importlib.metadata}), which pip wrote from C{setup.cfg}.  A copy run
from a source tree (a checkout on C{sys.path}, as the tests run it) reads
C{setup.cfg} beside the package instead: the metadata found there might be
another, installed copy's.  C{twistd presence --version}, C{presence-admin
--version}, the C{Server} header and C{presence_build_info} all show it.
"""

from __future__ import annotations

import configparser
import os
import platform

DISTRIBUTION = "presence"


def _fromSourceTree() -> str:
    """
    The version in the C{setup.cfg} next to this package, or C{""} when
    there is none (an installed copy) or it names another project.
    """
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if not parser.read(path, encoding="utf-8"):
            return ""
    except configparser.Error:
        return ""
    if parser.get("metadata", "name", fallback="") != DISTRIBUTION:
        return ""
    return parser.get("metadata", "version", fallback="")


def _fromMetadata() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return ""


#: The version, e.g. C{"0.1.0"}; C{"0+unknown"} if neither source has one.
version = _fromSourceTree() or _fromMetadata() or "0+unknown"


def describe() -> str:
    """
    One line for C{--version}: ours, then what we run on, since a report
    of a problem needs all three.
    """
    import twisted

    return "presence %s (Twisted %s, %s %s)" % (
        version,
        twisted.__version__,
        platform.python_implementation(),
        platform.python_version(),
    )
