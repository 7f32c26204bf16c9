"""The Ray backend: instances as Ray actors on a cluster (``backend.py``), each with a watchdog process on its
node (``watchdog.py``) that holds its capture pipes, relays its lines and carries out kills. Imported only when
``Config.backend`` is ``"ray"``; the modules that run on the nodes (``actor.py``, ``watchdog.py``) stay light.
"""
