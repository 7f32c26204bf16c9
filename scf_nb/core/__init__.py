"""The domain of scf_nb: functions, events, the engine, instances and the store.

Nothing under ``scf_nb.core`` imports IPython, ipywidgets, tornado or jupyter_server: the magics, widgets,
server extension and CLI are adapters on top of :class:`scf_nb.core.client.Client`.
"""
