"""Pure assigners: tensors in, per-anchor GT index out (-1 background)."""
from .atss import atss_assign
from .dynamic_atss import dynamic_atss_assign

__all__ = ["atss_assign", "dynamic_atss_assign"]
