"""Layering: the domain (``scf_nb.core`` and the module API) imports no Jupyter front-end code, and the
module an instance imports at every cold start stays light. Checked in clean interpreters (subprocesses),
since this test process has long since imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from processes import kill_tagged, tagged_env

JUPYTER = ["IPython", "ipywidgets", "tornado", "jupyter_server", "ipykernel", "traitlets", "zmq"]
HEAVY = ["pandas", "duckdb", "numpy", "pyarrow", "loky"]


def loaded_after(code: str, watch: list[str]) -> list[str]:
    """Which of ``watch`` (top-level packages) are in ``sys.modules`` after running ``code`` in a fresh
    interpreter."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({watch!r}))))
    """)
    tag, env = tagged_env()
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    finally:
        kill_tagged(tag)  # whatever the script started (instances of an engine it ran)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_probe_sees_what_an_import_loads() -> None:
    """The check itself works: importing the magics adapter does load IPython."""
    assert "IPython" in loaded_after("import scf_nb.magics", JUPYTER)
    assert "pandas" in loaded_after("import scf_nb.core.client", HEAVY)


def test_core_client_and_api_import_no_jupyter_code() -> None:
    assert loaded_after("import scf_nb\nimport scf_nb.core.client\nimport scf_nb.api", JUPYTER) == []


def test_every_core_module_imports_no_jupyter_code() -> None:
    code = """
        import pkgutil, importlib, scf_nb.core
        for m in pkgutil.iter_modules(scf_nb.core.__path__):
            importlib.import_module("scf_nb.core." + m.name)
    """
    assert loaded_after(code, JUPYTER) == []


def test_using_the_api_loads_no_jupyter_code(tmp_path: Any) -> None:
    """Not only importing: an engine that runs an event does not pull in IPython either."""
    code = f"""
        import scf_nb
        scf_nb.configure(home={str(tmp_path / "store")!r})
        scf_nb.create_function("f", "def main_handler(event, context):\\n    return 1\\n", async_run=True)
        assert scf_nb.invoke("f").result(timeout=60) == 1
        scf_nb.list_events(); scf_nb.overview()
        scf_nb.shutdown()
    """
    assert loaded_after(code, JUPYTER) == []


def test_package_import_is_light() -> None:
    """``import scf_nb`` (what every instance does at a cold start) loads neither pandas nor DuckDB."""
    assert loaded_after("import scf_nb", HEAVY + JUPYTER) == []


def test_worker_import_is_light() -> None:
    assert loaded_after("import scf_nb.core.worker", HEAVY + JUPYTER) == []


INSPECT = """
import sys
def main_handler(event, context):
    return sorted({m.split(".")[0] for m in sys.modules} & set(event["watch"]))
"""


def test_an_instance_process_loads_no_pandas_duckdb_or_jupyter(scf: Any) -> None:
    scf.create_function("inspect", INSPECT, async_run=True)
    assert scf.invoke("inspect", {"watch": ["pandas", "duckdb", "pyarrow"] + JUPYTER}).result(timeout=60) == []
