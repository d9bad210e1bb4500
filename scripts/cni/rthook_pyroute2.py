"""PyInstaller runtime hook of the CNI executable: import pyroute2's modules without its __init__.

``pyroute2/__init__.py`` imports every part of the library (NDB, IPDB, conntrack, WiFi,
IPVS, ...): half a second of a plugin invocation whose budget is one second, for modules
the plugin never uses. The package is registered unexecuted, so ``pyroute2.iproute`` and
``pyroute2.netlink.exceptions`` (all the plugin imports) load alone.
"""

import importlib.util
import sys

_spec = importlib.util.find_spec("pyroute2")
if _spec is not None and "pyroute2" not in sys.modules:
    sys.modules["pyroute2"] = importlib.util.module_from_spec(_spec)
