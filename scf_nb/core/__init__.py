"""The domain of scf_nb: statuses and their moves, event records, functions, settings, errors, how results are
encoded and how captured output becomes log lines. It imports nothing else of scf_nb (``protocol.py`` only
re-exports the client protocol at its documented path), and nothing of IPython, ipywidgets, tornado or
jupyter_server: the magics, widgets, server extension and CLI are adapters on top of the client protocol
(``scf_nb.clients``). ``docs/architecture.md`` has the whole tree.
"""
