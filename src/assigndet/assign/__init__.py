"""Pure assigners: tensors in, per-anchor GT index out (-1 background)."""
from .atss import atss_assign

__all__ = ["atss_assign"]
