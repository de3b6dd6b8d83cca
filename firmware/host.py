"""Load the firmware library into CPython (host tests, simulations).

CPython's ``safething`` is the core package, so the firmware's ``safething``
package is loaded under another name; its imports are relative, so it works
whole under that name::

    sys.path.append("firmware")   # at the end: the core `safething` stays first
    import host
    host.load()                    # the package, as sys.modules["safething_fw"]
    from safething_fw.device import Device

Board modules (``machine``, ``network``, ``umqtt.simple``, ``dht``...) are not
provided: install fakes in ``sys.modules`` first, or pass ``net=`` and
``rtc=False`` to ``Device`` and replace ``safething_fw.port.deepsleep``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["LIBRARY", "load"]

LIBRARY = Path(__file__).resolve().parent / "safething"
"""The firmware's ``safething`` package folder."""


def load(name: str = "safething_fw") -> ModuleType:
    """Import the firmware library as package ``name`` (once; later calls return it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, LIBRARY / "__init__.py", submodule_search_locations=[str(LIBRARY)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
