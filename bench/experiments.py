"""
What-if patches, applied inside a benchmarked server process only, to
measure what a suggested change to C{presence/} would gain before anyone
makes it.  Nothing here is product code: C{presence_bench.py} reads the
names, and the bootstrap that L{bench.loadtools.Server} runs when
experiments are asked for (C{presence_bench.py --experiment NAME}) applies
them.

An experiment that the product has since adopted is removed from here:
measuring it again would only patch the product with an older copy of
itself.
"""

from __future__ import annotations

from typing import Callable, Dict, List

#: Name to patch; empty while no what-if is waiting to be measured.
EXPERIMENTS: Dict[str, Callable[[], None]] = {}


def apply(names: List[str]) -> None:
    """
    Apply the named experiments (before twistd imports the plugin).
    """
    for name in names:
        EXPERIMENTS[name]()


def bootstrap(names: List[str]) -> str:
    """
    The C{python -c} code that applies C{names} and then runs twistd.
    """
    return (
        "import bench.experiments as e; e.apply(%r); "
        "from twisted.scripts.twistd import run; run()" % (list(names),)
    )
