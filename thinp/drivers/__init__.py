"""Docker's storage drivers behind one interface (see :mod:`thinp.drivers.base`)."""
from .base import (
    DRIVER_NAMES,
    METRIC_KEYS,
    OP_COUNTER_KEYS,
    Capabilities,
    Change,
    Driver,
    MountedView,
    Usage,
    empty_stats,
    get_driver,
    known_drivers,
    register,
)

__all__ = ["DRIVER_NAMES", "METRIC_KEYS", "OP_COUNTER_KEYS", "Capabilities", "Change", "Driver", "MountedView",
           "Usage", "empty_stats",
           "get_driver", "known_drivers", "register"]
