"""Per-function Ray resources and the backend settings, checked without Ray: the loky backend refuses what it
cannot give, the values are checked, stored and loaded back, and ``backend``/``ray_address`` are pinned
settings that need a new engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from engine_support import code_of

import scf_nb
from scf_nb.core.config import LIVE_SETTINGS, Config, from_environment

CODE = "def main_handler(event, context):\n    return 1\n"


def test_loky_refuses_gpus_and_custom_resources(scf: Any) -> None:
    assert code_of(lambda: scf.create_function("f", CODE, num_gpus=1)) == "InvalidParameterValue.NumGpus"
    assert code_of(lambda: scf.create_function("f", CODE, resources={"accel": 1})) == "InvalidParameterValue.Resources"
    with pytest.raises(scf_nb.ScfError, match="backend='ray'"):
        scf.create_function("f", CODE, num_gpus=0.5)


def test_loky_takes_num_cpus_as_a_hint(scf: Any) -> None:
    fn = scf.create_function("f", CODE, async_run=True, num_cpus=2, num_gpus=0)
    assert (fn.num_cpus, fn.num_gpus, dict(fn.resources)) == (2.0, 0.0, {})
    assert scf.invoke("f").result(timeout=60) == 1


def test_resource_values_are_checked(scf: Any) -> None:
    assert code_of(lambda: scf.create_function("f", CODE, num_cpus=-1)) == "InvalidParameterValue.NumCpus"
    assert code_of(lambda: scf.create_function("f", CODE, num_gpus="1")) == "InvalidParameterValue.NumGpus"
    assert code_of(lambda: scf.create_function("f", CODE, resources=["a"])) == "InvalidParameterValue.Resources"
    assert code_of(lambda: scf.create_function("f", CODE, resources={"CPU": 1})) == "InvalidParameterValue.Resources"
    assert code_of(lambda: scf.create_function("f", CODE, resources={"a": -1})) == "InvalidParameterValue.Resources"


def test_resources_are_stored_and_loaded_back(home: Path) -> None:
    from scf_nb.core.functions import make_function
    from scf_nb.store.store import Store

    fn = make_function("f", CODE, async_run=True, trace=True, timeout=None, concurrency=None, qps_limit=None,
                       handler="main_handler", namespace="default", env=None, memory_mb=None, description="",
                       num_cpus=0.5, num_gpus=1, resources={"accel": 2})
    store = Store(home / "s.duckdb", 64, lambda evs: None)
    try:
        store.start(0.01, lambda: 0.0)
        store.save_functions([fn])
        (back,) = store.load_functions()
    finally:
        store.close()
    assert (back.num_cpus, back.num_gpus, dict(back.resources)) == (0.5, 1.0, {"accel": 2.0})


def test_list_functions_shows_the_resources(scf: Any) -> None:
    scf.create_function("f", CODE, num_cpus=1.5)
    row = scf.list_functions().iloc[0]
    assert row["num_cpus"] == 1.5 and row["resources"] == {}


def test_backend_settings() -> None:
    assert (Config().backend, Config().ray_address) == ("loky", None)
    cfg = from_environment({"SCF_NB_BACKEND": "ray", "SCF_NB_RAY_ADDRESS": "10.0.0.5:6379"})
    assert (cfg.backend, cfg.ray_address) == ("ray", "10.0.0.5:6379")
    assert from_environment({"SCF_NB_RAY_ADDRESS": " "}).ray_address is None
    with pytest.raises(scf_nb.ScfError, match="backend must be one of 'loky', 'ray'"):
        Config().updated(backend="dask")
    with pytest.raises(scf_nb.ScfError, match="ray_address"):
        Config().updated(ray_address="")
    assert not {"backend", "ray_address"} & LIVE_SETTINGS  # a change needs a new engine


def test_changing_the_backend_needs_a_new_engine(scf: Any, tmp_path: Path) -> None:
    scf.create_function("f", CODE, async_run=True)
    engine = scf.api.client().engine
    assert engine.describe()["backend"] == "loky"
    scf.configure(ray_address="127.0.0.1:1")  # no event runs: this engine stops, the next uses the setting
    assert engine._closed
    scf.configure(ray_address=None)
    assert scf.api.client().engine.describe()["backend"] == "loky"
