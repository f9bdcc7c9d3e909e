"""dm-thin: the pool, its devices, status and messages, and the metadata tools."""
from .blockmap import BlockMap, block_map
from .metadata_size import metadata_size
from .pool import DEFAULT_COMMIT_INTERVAL, PoolEvent, PoolStatus, ReplayResult, ThinDevice, ThinPool, ThinStatus
from .whatif import GrowthResult, grow_devices

__all__ = ["ThinPool", "ThinDevice", "PoolStatus", "ThinStatus", "PoolEvent", "ReplayResult",
           "metadata_size", "DEFAULT_COMMIT_INTERVAL", "BlockMap", "block_map", "GrowthResult", "grow_devices"]
