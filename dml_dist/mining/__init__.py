"""Hard-negative-class mining: the selection function, the class bank and its Ray actor."""

from dml_dist.mining.bank import ClassBank
from dml_dist.mining.selection import select_hard_classes

__all__ = ["ClassBank", "select_hard_classes"]
