"""dm-thin: the pool, its devices, status and messages, and the metadata tools."""
from .metadata_size import metadata_size
from .pool import DEFAULT_COMMIT_INTERVAL, PoolEvent, PoolStatus, ReplayResult, ThinDevice, ThinPool, ThinStatus

__all__ = ["ThinPool", "ThinDevice", "PoolStatus", "ThinStatus", "PoolEvent", "ReplayResult",
           "metadata_size", "DEFAULT_COMMIT_INTERVAL"]
