"""Clients: the client protocol (``protocol.py``), the one API every adapter uses; the embedded client on an
engine in this process (``embedded.py``); the ``Event`` handle, which uses only the protocol (``events.py``).
An HTTP client implements the same protocol. (Not ``scf_nb.client``: that name is the module function that
chooses the client.)"""
