"""``dml-dist bench gpu``: the worker's GPU path checked and timed in minutes (see ``suite.py``)."""
