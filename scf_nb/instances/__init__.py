"""Instances: the processes (or actors) that run events, behind one interface (``backend.py``).

The engine starts, feeds and kills instances only through :class:`scf_nb.instances.backend.Backend`; the
loky implementation is ``instances/loky/``. This package is imported at every instance's cold start (the
worker is under it): it stays light.
"""
