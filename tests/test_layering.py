"""Layering: the domain (``scf_nb.core`` and the module API) imports no Jupyter front-end code, and the
module an instance imports at every cold start stays light. Checked in clean interpreters (subprocesses),
since this test process has long since imported everything."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
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


# -- only the store runs SQL ------------------------------------------------------------------------------------
PACKAGE = Path(__file__).resolve().parent.parent / "scf_nb"
STORE_LAYER = {"core/store.py", "core/stats.py", "core/logbuffer.py", "core/query.py"}
SQL = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|"
                 r"\b(CREATE|ALTER|DROP)\s+TABLE\b|\bCOPY\s*\(", re.IGNORECASE)


def sql_texts(source: str) -> list[tuple[int, str]]:
    """The string constants and f-string parts of ``source`` that read as SQL (docstrings left out)."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        else:
            continue
        if SQL.search(text):
            found.append((node.lineno, text[:80]))
    return found


def test_the_sql_check_finds_sql() -> None:
    assert sql_texts('q = "select a, b from events where x = ?"') == [(1, "select a, b from events where x = ?")]
    assert sql_texts('q = f"DELETE FROM {table} WHERE k = ?"') != []
    assert sql_texts('"""Delete from the store: SELECT x FROM y."""\nmsg = "pick one from the list"') == []
    assert sql_texts((PACKAGE / "core" / "store.py").read_text())


def test_only_the_store_layer_holds_sql() -> None:
    """DESIGN.md: only the store runs SQL. Its layer is store.py, stats.py, logbuffer.py and query.py."""
    outside = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in STORE_LAYER and sql_texts(path.read_text()):
            outside[name] = sql_texts(path.read_text())
    assert outside == {}


def test_only_the_api_chooses_the_client() -> None:
    """Nothing outside ``scf_nb.api`` (and the core itself) makes a Client or an Engine or reaches for one."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "api.py":
            continue
        text = path.read_text()
        assert not re.search(r"\b(Client|Engine)\(|\.engine\b|\b_client\b", text), path.name


VIEWS_MAY_USE = {"errors", "events", "status", "protocol", "observe", "follow"}  # of scf_nb.core


def core_imports(source: str, package: str = "scf_nb.widgets") -> list[tuple[int, str]]:
    """The ``scf_nb.core`` modules (and names imported from ``scf_nb.core`` itself) that ``source``, a module
    of ``package``, imports: absolute or relative, at the top or inside a function or ``TYPE_CHECKING``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names] if base == "scf_nb.core" else [base]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t == "scf_nb.core" or t.startswith("scf_nb.core.")]
    return found


def test_the_import_check_finds_core_imports() -> None:
    assert core_imports("from ..core import query\nimport scf_nb.core.engine\nfrom ..core.errors import X\n") == [
        (1, "scf_nb.core.query"), (2, "scf_nb.core.engine"), (3, "scf_nb.core.errors")]
    assert core_imports("def f():\n    from ...core.store import Store\n", "scf_nb.widgets.sub") == [
        (2, "scf_nb.core.store")]
    assert core_imports("from .. import api\nfrom .hub import hub_for\nimport ipywidgets\n") == []


def test_the_views_use_only_the_protocol_side_of_the_core() -> None:
    """``scf_nb.widgets`` reaches the engine only through the client protocol: of ``scf_nb.core`` it imports
    errors, events, status, protocol, observe and follow, never the engine, the store or the queries."""
    bad = {}
    for path in sorted((PACKAGE / "widgets").rglob("*.py")):
        package = ".".join(["scf_nb", *path.relative_to(PACKAGE).parent.parts])
        used = core_imports(path.read_text(), package)
        wrong = [(line, name) for line, name in used
                 if name.removeprefix("scf_nb.core.").split(".")[0] not in VIEWS_MAY_USE]
        if wrong:
            bad[path.name] = wrong
    assert bad == {}
