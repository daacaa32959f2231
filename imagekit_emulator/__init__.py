"""A local ImageKit.io emulator: upload, file details, versions and the remove-bg extension
with real background removal and signed webhook callbacks, plus fault injection.

It needs no Django and no account: ``python -m imagekit_emulator`` or
``Emulator(EmulatorConfig(port=0)).start()``.
"""

from .config import EmulatorConfig
from .faults import Faults, FaultsError
from .server import Emulator

__all__ = ["Emulator", "EmulatorConfig", "Faults", "FaultsError"]
