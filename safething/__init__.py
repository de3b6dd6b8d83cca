"""SAFEthing: Secure Access For Everything.

IoT things register, publish readings and events, subscribe to each other
and request actions over a data network that nobody has to trust.
"""

from safething.errors import SafeThingError, TamperedDataError
from safething.net import Client, Identity, XorName
from safething.store import open_store

__all__ = [
    "Client",
    "Identity",
    "SafeThingError",
    "TamperedDataError",
    "XorName",
    "__version__",
    "open_store",
]

__version__ = "0.1.0"
