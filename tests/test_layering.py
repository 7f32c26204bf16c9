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
from collections.abc import Callable
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
    assert "pandas" in loaded_after("import scf_nb.clients.embedded", HEAVY)


def test_core_client_and_api_import_no_jupyter_code() -> None:
    assert loaded_after("import scf_nb\nimport scf_nb.clients.embedded\nimport scf_nb.api", JUPYTER) == []


def test_every_core_module_imports_no_jupyter_code() -> None:
    """Every module of every package (the domain, engine, instances, store, clients): only the adapters beside
    them (``magics.py``, ``widgets/``) may."""
    code = """
        import pkgutil, importlib
        for package in ("core", "engine", "store", "clients", "instances", "instances.loky", "instances.ray"):
            path = importlib.import_module("scf_nb." + package).__path__
            for m in pkgutil.iter_modules(path, f"scf_nb.{package}."):
                importlib.import_module(m.name)
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
    assert loaded_after("import scf_nb.instances.loky.worker", HEAVY + JUPYTER) == []


def test_ray_is_imported_only_when_chosen(tmp_path: Any) -> None:
    """Ray is an optional extra: a loky engine that runs an event, and every module of the Ray backend, load
    none of it; what runs on a Ray node beside the actor (its watchdog) loads nothing heavy either."""
    code = f"""
        import pkgutil, importlib
        import scf_nb, scf_nb.instances.ray
        for m in pkgutil.iter_modules(scf_nb.instances.ray.__path__, "scf_nb.instances.ray."):
            importlib.import_module(m.name)
        scf_nb.configure(home={str(tmp_path / "store")!r})
        scf_nb.create_function("f", "def main_handler(event, context):\\n    return 1\\n", async_run=True)
        assert scf_nb.invoke("f").result(timeout=60) == 1
        scf_nb.shutdown()
    """
    assert loaded_after(code, ["ray"]) == []
    for module in ("watchdog", "actor"):
        assert loaded_after(f"import scf_nb.instances.ray.{module}", HEAVY + JUPYTER + ["ray"]) == []


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


def found_outside(check: Callable[[str], list[Any]], allowed: Callable[[str], bool]) -> dict[str, list[Any]]:
    """What ``check`` finds in the package's modules (by path under the package) that ``allowed`` does not cover."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not allowed(name) and (hits := check(path.read_text())):
            found[name] = hits
    return found


STORE_LAYER = {"store/store.py", "store/stats.py", "store/logbuffer.py", "store/query.py"}
SQL = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|"
                 r"\b(CREATE|ALTER|DROP)\s+TABLE\b|\bCOPY\s*\(", re.IGNORECASE)


def docstring_ids(tree: ast.AST) -> set[int]:
    """The ``id``s of the docstring constants of ``tree``'s module, classes and functions."""
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def sql_texts(source: str) -> list[tuple[int, str]]:
    """The string constants and f-string parts of ``source`` that read as SQL (docstrings left out)."""
    tree = ast.parse(source)
    docstrings = docstring_ids(tree)
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
    assert sql_texts((PACKAGE / "store" / "store.py").read_text())


def test_only_the_store_layer_holds_sql() -> None:
    """DESIGN.md: only the store runs SQL. Its layer is store.py, stats.py, logbuffer.py and query.py (store/)."""
    assert found_outside(sql_texts, lambda name: name in STORE_LAYER) == {}


def test_only_the_api_chooses_the_client() -> None:
    """Nothing outside ``scf_nb.api`` (and the core itself) makes a Client or an Engine or reaches for one: not
    the top-level adapters, not the CLI."""
    for path in sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "cli").glob("*.py")]):
        if path.name == "api.py":
            continue
        text = path.read_text()
        assert not re.search(r"\b(Client|Engine)\(|\.engine\b|\b_client\b", text), path.name


# -- only the backend holds loky, pidfd and /proc detail --------------------------------------------------------
LOKY_BACKEND = "instances/loky/"
RAY_BACKEND = "instances/ray/"  # the second backend: it reuses the loky worker's runner, capture and /proc code
FACTORY = "instances/__init__.py"  # open_backend: the one place that names the backends


def backend_details(source: str) -> list[tuple[int, str]]:
    """What in ``source`` (code, not docstrings or comments) reaches the loky backend or the OS's process
    details: an import of loky or of the loky subpackage, ``pidfd_open``, a ``/proc`` path."""
    tree = ast.parse(source)
    docstrings = docstring_ids(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if "loky" in a.name.split(".")]
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if "loky" in parts or any(a.name == "loky" for a in node.names):
                found.append((node.lineno, f"from {'.' * node.level}{node.module or ''}"))
        elif isinstance(node, ast.Attribute) and node.attr == "pidfd_open":
            found.append((node.lineno, "pidfd_open"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and "/proc" in node.value):  # (an f-string's parts are constants too)
            found.append((node.lineno, node.value[:40]))
    return found


def test_the_backend_check_finds_details() -> None:
    assert backend_details("from .loky.backend import LokyBackend") == [(1, "from .loky.backend")]
    assert backend_details("import os\nfd = os.pidfd_open(1)") == [(2, "pidfd_open")]
    assert backend_details('open(f"/proc/{pid}/stat")') == [(1, "/proc/")]
    assert backend_details('"""Reads /proc."""\nfrom ..instances import loky') == [(2, "from ..instances")]
    assert backend_details((PACKAGE / "instances" / "loky" / "channels.py").read_text())


def test_only_the_loky_backend_holds_loky_pidfd_or_proc_detail() -> None:
    """The engine, the store, the client and the domain reach instances only through the backend interface:
    nothing outside ``instances/loky/`` (and the factory that opens it) imports loky or the loky backend, opens
    a pidfd or reads /proc (``instances/ray/`` is a backend too)."""
    assert found_outside(backend_details, lambda name: name.startswith((LOKY_BACKEND, RAY_BACKEND))
                         or name == FACTORY) == {}


def ray_imports(source: str) -> list[int]:
    """The lines of ``source`` that import Ray."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
            node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n.split(".")[0] == "ray" for n in names):
            found.append(node.lineno)
    return found


def test_only_the_ray_backend_imports_ray() -> None:
    assert ray_imports("import ray\nfrom ray.util import x\nfrom .ray import backend\n") == [1, 2]
    assert found_outside(ray_imports, lambda name: name.startswith(RAY_BACKEND)) == {}


# -- only the event table moves a status ------------------------------------------------------------------------
STATUS_MOVERS = {"engine/table.py"}


def status_assignments(source: str) -> list[int]:
    """The lines of ``source`` that assign another object's ``status`` (``ev.status = ...``; a class setting
    its own ``self.status`` is not an event's)."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in ast.walk(target):
                if (isinstance(t, ast.Attribute) and t.attr == "status" and isinstance(t.ctx, ast.Store)
                        and not (isinstance(t.value, ast.Name) and t.value.id == "self")):
                    found.append(node.lineno)
    return found


def test_the_status_check_finds_assignments() -> None:
    assert status_assignments("ev.status = Status.RUNNING\nx = ev.status\n") == [1]
    assert status_assignments("a.status, b = 1, 2") == [1]
    assert status_assignments("class Done:\n    def __init__(self, status):\n        self.status = status\n") == []
    assert status_assignments((PACKAGE / "engine" / "table.py").read_text())


def test_only_the_event_table_moves_a_status() -> None:
    """Every status change goes through ``engine/table.py`` (and ``status.can_move``)."""
    assert found_outside(status_assignments, lambda name: name in STATUS_MOVERS) == {}


# of scf_nb's own packages, what the views may import: the client protocol's side, never the engine, the backend,
# the store or its queries (the observation types are the store's, named in the protocol)
VIEWS_MAY_USE = {"api", "core.errors", "core.status", "core.protocol", "core.readable", "clients.protocol",
                 "clients.events", "store.observe", "store.follow"}
OWN_PACKAGES = ("api", "core", "clients", "engine", "instances", "store", "magics", "cli")
# the CLI: the same, plus the embedded Client class (to know whether the engine runs in its own process) and
# its own modules
CLI_MAY_USE = VIEWS_MAY_USE | {"cli"}


def own_imports(source: str, package: str = "scf_nb.widgets") -> list[tuple[int, str]]:
    """The modules of scf_nb's other packages that ``source``, a module of ``package``, imports (``scf_nb.x.y``
    as ``x.y``): absolute or relative, at the top or inside a function or ``TYPE_CHECKING``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names]  # a name may be a module
        else:
            continue
        for t in targets:
            rest = t.removeprefix("scf_nb.")
            if t.startswith("scf_nb.") and rest.split(".")[0] in OWN_PACKAGES:
                found.append((node.lineno, rest))
    return found


def test_the_import_check_finds_own_imports() -> None:
    assert own_imports("from ..store import query\nimport scf_nb.engine.engine\nfrom ..core.errors import X\n") == [
        (1, "store.query"), (2, "engine.engine"), (3, "core.errors.X")]
    assert own_imports("def f():\n    from ...store.store import Store\n", "scf_nb.widgets.sub") == [
        (2, "store.store.Store")]
    assert own_imports("from .. import api\nfrom .hub import hub_for\nimport ipywidgets\n") == [(1, "api")]


def protocol_side_breaches(folder: str, allowed: set[str]) -> dict[str, list[tuple[int, str]]]:
    """The imports of scf_nb's other packages by the modules under ``folder`` that ``allowed`` does not cover."""
    bad = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        package = ".".join(["scf_nb", *path.relative_to(PACKAGE).parent.parts])
        wrong = [(line, name) for line, name in own_imports(path.read_text(), package)
                 if name not in allowed and not any(name.startswith(m + ".") for m in allowed)]
        if wrong:
            bad[path.name] = wrong
    return bad


def test_the_views_use_only_the_protocol_side() -> None:
    """``scf_nb.widgets`` reaches the engine only through the client protocol: of scf_nb's other packages it
    imports the api, errors, statuses, the protocol, the Event handle and the observation types, never the
    engine, the backend, the store or the queries."""
    assert protocol_side_breaches("widgets", VIEWS_MAY_USE) == {}


def test_the_cli_uses_only_the_protocol_side() -> None:
    """``scf_nb.cli`` likewise (``engine_info()`` tells it whether the engine runs in its own process)."""
    assert protocol_side_breaches("cli", CLI_MAY_USE) == {}


def test_the_cli_loads_no_jupyter_code_and_parses_before_the_api_loads() -> None:
    """Only ``scf-nb serve`` loads jupyter_server (on demand); the parser loads neither pandas nor DuckDB, so
    ``--help`` and bad usage answer at once."""
    assert loaded_after("import scf_nb.cli, scf_nb.cli.commands", JUPYTER) == []
    assert loaded_after("import scf_nb.cli\nscf_nb.cli.parser.build().format_help()", HEAVY + JUPYTER) == []


# -- the server extension: the only package that imports tornado or jupyter_server, on the protocol side ---------
# the domain's plain values (functions, results' JSON form) too: nothing of the engine, store or backend
SERVER_MAY_USE = {"api", "core.errors", "core.status", "core.functions", "core.results", "clients.protocol",
                  "clients.wire", "clients.discovery", "store.observe", "store.follow"}
WEB = ("tornado", "jupyter_server")


def web_imports(source: str) -> list[tuple[int, str]]:
    """The imports of tornado or jupyter_server in ``source`` (anywhere in it)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found += [(node.lineno, n) for n in names if n.split(".")[0] in WEB]
    return found


def test_the_web_check_finds_imports() -> None:
    source = "import tornado.web\nfrom jupyter_server.base.handlers import APIHandler\nfrom . import x\n"
    assert web_imports(source) == [(1, "tornado.web"), (2, "jupyter_server.base.handlers")]


def test_only_the_server_package_imports_tornado_or_jupyter_server() -> None:
    """(and ``scf-nb serve``, which starts a Jupyter server with the extension, on demand)"""
    assert found_outside(web_imports, lambda name: name.startswith("server/") or name == "cli/serve.py") == {}


def test_the_server_uses_only_the_protocol_side() -> None:
    """``scf_nb.server`` reaches the engine through the client protocol (and ``api`` for hosting it): never the
    engine, the backend, the store or its queries, nor the embedded client itself."""
    assert protocol_side_breaches("server", SERVER_MAY_USE) == {}


def test_the_http_client_loads_no_jupyter_code() -> None:
    """A plain script can use it: the HTTP client, its wire codec and discovery load no Jupyter or web code."""
    assert loaded_after("import scf_nb.clients.http, scf_nb.clients.wire, scf_nb.clients.discovery",
                        JUPYTER) == []


# The Event Management page (scf_nb/server/static): data goes into the DOM as text, and no code runs inline.
MARKUP_SINKS = re.compile(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\s*\(|new Function\b"
                          r"|<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=")


def markup_sinks(source: str) -> list[tuple[int, str]]:
    """The lines of ``source`` (the page's JS or HTML) that parse text as markup or code, or carry inline code."""
    return [(n, m.group(0)) for n, line in enumerate(source.splitlines(), 1) for m in MARKUP_SINKS.finditer(line)]


def test_the_markup_check_finds_sinks() -> None:
    assert markup_sinks("a.textContent = x\nrow.innerHTML = x\nel.insertAdjacentHTML('a', x)\n") == [
        (2, ".innerHTML"), (3, "insertAdjacentHTML")]
    assert [hit for _, hit in markup_sinks('<script>go()</script>\n<img onerror="x">\n<script src="a.js">')] == [
        "<script>", " onerror="]


def test_the_page_puts_data_into_the_dom_as_text_only() -> None:
    """The page's script builds nodes and sets ``textContent``/attributes, never markup from strings; its HTML
    has no inline script or handler (its Content Security Policy would refuse them anyway); and ``page.py``
    uses nothing of scf_nb: the page reaches the engine only through the REST API."""
    static = PACKAGE / "server" / "static"
    files = sorted(static.glob("*.js")) + sorted(static.glob("*.html"))
    assert {p.suffix for p in files} == {".js", ".html"}
    assert {p.name: markup_sinks(p.read_text()) for p in files} == {p.name: [] for p in files}
    assert own_imports((PACKAGE / "server" / "page.py").read_text(), "scf_nb.server") == []

