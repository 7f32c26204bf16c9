"""The loky backend: one single-worker loky executor per instance, running a serve loop that talks to the
engine over its own Unix socket (``worker.py``), with fds 1/2 captured into pipes the engine reads.

Light on purpose: every instance imports ``scf_nb.instances.loky.worker`` at its cold start.
"""
