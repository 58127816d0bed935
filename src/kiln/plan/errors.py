"""``kiln plan``'s error, defined with the rest of the tree in :mod:`kiln.errors`."""

from kiln.errors import PlanError

__all__ = ["PlanError"]
