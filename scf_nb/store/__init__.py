"""The store: one DuckDB file and its one writer (``store.py``), the query layer that checks every filter and
holds all the SQL (``query.py``, ``stats.py``, ``logbuffer.py``), and observation on its commits: the change
feed (``observe.py``) and the log followers on it (``follow.py``)."""
