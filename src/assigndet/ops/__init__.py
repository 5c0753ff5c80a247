"""Pure tensor operators: Precise RoI Pooling."""
from .prroi_pool import MultiScalePrRoIPool, PrRoIPool, map_roi_levels, prroi_pool

__all__ = ["prroi_pool", "PrRoIPool", "MultiScalePrRoIPool", "map_roi_levels"]
