"""The server side of scf_nb: what a Jupyter server (or ``scf-nb serve``) hosts around one engine."""
