"""Functions and their versions: what a cell becomes, checked when it is registered."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

from .config import ASYNC_DEFAULT_TIMEOUT_S, SYNC_DEFAULT_TIMEOUT_S
from .errors import ScfError, invalid, not_found_function

LATEST = "$LATEST"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,59}\Z")  # \Z: "$" would let a trailing newline through


@dataclass(frozen=True)
class Function:
    """One version of a function. ``$LATEST`` changes with each ``create_function``; "1", "2", ... never do.

    ``revision`` names the code and settings an instance loads: a published version shares the revision of
    the ``$LATEST`` it was taken from, so both are served by the same warm instances.
    """

    name: str
    namespace: str
    code: str
    handler: str = "main_handler"
    async_run: bool = False
    trace: bool = True
    timeout: float | None = None
    concurrency: int | None = None
    qps_limit: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    memory_mb: int | None = None
    description: str = ""
    # What each instance holds on a Ray cluster (the ray backend's actor options); loky refuses what it cannot give
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    version: str = LATEST
    revision: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @cached_property
    def key(self) -> tuple[str, str]:  # (asked a dozen times per event: made once)
        return (self.namespace, self.name)

    @property
    def effective_timeout(self) -> float:
        if self.timeout is not None:
            return float(self.timeout)
        return float(ASYNC_DEFAULT_TIMEOUT_S if self.async_run else SYNC_DEFAULT_TIMEOUT_S)

    @property
    def invoke_type(self) -> str:
        return "Event" if self.async_run else "RequestResponse"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["env"] = dict(self.env)
        d["resources"] = dict(self.resources)
        return d


def check_name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise invalid(
            "FunctionName" if kind == "function" else "Namespace",
            f"bad {kind} name {value!r}: use 1-60 letters, digits, '-' or '_', starting with a letter",
        )
    return value


def check_code(name: str, code: Any, handler: str) -> None:
    """Compile ``code`` and find ``handler`` defined at its top level; else a clear error with the line."""
    if not isinstance(code, str):
        raise invalid("Code", f"the code of {name} must be a str, got {type(code).__name__}")
    if not isinstance(handler, str) or not handler.isidentifier():
        raise invalid("Handler", f"handler must be a Python name, got {handler!r}")
    try:
        tree = ast.parse(code, filename=f"<scf_function {name}>")
    except SyntaxError as e:
        line = (e.text or "").rstrip("\n")
        shown = f"\n    {line}" if line else ""
        raise invalid("Code", f"syntax error in {name}, line {e.lineno}: {e.msg}{shown}") from None
    if handler not in _top_level_names(tree.body):
        defined = sorted(n for n in _top_level_names(tree.body) if not n.startswith("_"))
        hint = f"; it defines: {', '.join(defined)}" if defined else ""
        raise invalid("Handler", f"{name} has no top-level function {handler!r} (its handler){hint}")


def _top_level_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for part in ("body", "orelse", "finalbody"):
                names |= _top_level_names(getattr(node, part, []))
            for h in getattr(node, "handlers", []):
                names |= _top_level_names(h.body)
    return names


def _positive(name: str, value: Any, kind: type = float) -> Any:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        wanted = "integer" if kind is int else "number"
        raise invalid(name.capitalize(), f"{name} must be a positive {wanted}, got {value!r}")
    return kind(value)


def _amount(name: str, value: Any) -> float | None:
    """A resource amount: None, or a number >= 0."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        code = "".join(part.capitalize() for part in name.split("_"))
        raise invalid(code, f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def check_resources(value: Any) -> dict[str, float]:
    """Custom resources (name -> amount >= 0), as Ray's ``resources=`` takes them; CPU and GPU have their own."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise invalid("Resources", f"resources must be a dict of resource names to amounts, got {value!r}")
    out = {}
    for k, v in value.items():
        if k in ("CPU", "GPU"):
            raise invalid("Resources", f"resources: give {k} as num_{k.lower()}s, not as a custom resource")
        amount = _amount("resources", v)
        assert amount is not None
        out[k] = amount
    return out


def make_function(name: str, code: str, *, async_run: bool, trace: bool, timeout: Any, concurrency: Any,
                  qps_limit: Any, handler: str, namespace: str, env: Any, memory_mb: Any,
                  description: str, num_cpus: Any = None, num_gpus: Any = None, resources: Any = None) -> Function:
    """A checked ``$LATEST`` (revision and times are set by the registry)."""
    check_name("function", name)
    check_name("namespace", namespace)
    check_code(name, code, handler)
    if env is None:
        env = {}
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and k for k in env):
        raise invalid("Environment", f"env must be a dict of names to values, got {env!r}")
    return Function(
        name=name, namespace=namespace, code=code, handler=handler, async_run=bool(async_run),
        trace=bool(trace), timeout=_positive("timeout", timeout),
        concurrency=_positive("concurrency", concurrency, int), qps_limit=_positive("qps_limit", qps_limit),
        env={k: str(v) for k, v in env.items()},
        memory_mb=_positive("memory_mb", memory_mb, int), description=str(description or ""),
        num_cpus=_amount("num_cpus", num_cpus), num_gpus=_amount("num_gpus", num_gpus),
        resources=check_resources(resources),
    )


class Registry:
    """Every function and version the engine knows, keyed by (namespace, name) then version."""

    def __init__(self, functions: list[Function] = ()) -> None:  # type: ignore[assignment]
        self._fns: dict[tuple[str, str], dict[str, Function]] = {}
        self._revision = 0
        for fn in functions:
            self._fns.setdefault(fn.key, {})[fn.version] = fn
            self._revision = max(self._revision, fn.revision)

    def put_latest(self, fn: Function, now: float) -> Function:
        """Create or update ``$LATEST``; sync/async is locked at creation."""
        old = self._fns.get(fn.key, {}).get(LATEST)
        if old is not None and old.async_run != fn.async_run:
            mode = "async" if old.async_run else "sync"
            raise ScfError(
                "InvalidParameterValue.AsyncRunEnable",
                f"{fn.name} was created {mode}; async execution is chosen at creation and cannot be switched "
                f"(delete the function and create it again to change it)",
            )
        self._revision += 1
        created = old.created_at if old is not None else now
        fn = replace(fn, version=LATEST, revision=self._revision, created_at=created, updated_at=now)
        self._fns.setdefault(fn.key, {})[LATEST] = fn
        return fn

    def publish(self, namespace: str, name: str, description: str, now: float) -> Function:
        latest = self.get(namespace, name, LATEST)
        versions = [int(v) for v in self._fns[latest.key] if v != LATEST]
        version = str(max(versions, default=0) + 1)
        fn = replace(latest, version=version, description=description or latest.description,
                     created_at=now, updated_at=now)
        self._fns[latest.key][version] = fn
        return fn

    def get(self, namespace: str, name: str, qualifier: str = LATEST) -> Function:
        versions = self._fns.get((namespace, name))
        if not versions:
            raise not_found_function(name, namespace)
        fn = versions.get(str(qualifier))
        if fn is None:
            raise ScfError("ResourceNotFound.Version" if qualifier != LATEST else "ResourceNotFound.Function",
                           f"{namespace}/{name} has no version {qualifier!r}; it has: {', '.join(versions)}")
        return fn

    def remove(self, namespace: str, name: str) -> list[Function]:
        self.get(namespace, name)
        return list(self._fns.pop((namespace, name)).values())

    def all(self) -> list[Function]:
        return [fn for versions in self._fns.values() for fn in versions.values()]
