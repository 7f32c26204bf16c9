"""What ``pip install`` puts in place for the server extension: the wheel carries the config file that enables
it (hatch shared-data -> ``etc/jupyter/jupyter_server_config.d/scf_nb.json`` under the environment's prefix,
where a plain ``jupyter server`` / ``jupyter lab`` reads it) and the OpenAPI document beside the handlers."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "etc/jupyter/jupyter_server_config.d/scf_nb.json"


def test_the_wheel_installs_the_config_that_enables_the_extension(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("scf_nb-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (config,) = [n for n in names if n.endswith(".data/data/" + CONFIG)]
        assert json.loads(z.read(config)) == {"ServerApp": {"jpserver_extensions": {"scf_nb.server": True}}}
        assert "scf_nb/server/openapi.json" in names and "scf_nb/server/extension.py" in names
        assert {f"scf_nb/server/static/events.{x}" for x in ("html", "js", "css")} <= set(names)  # the page


def test_the_extension_point_names_the_app() -> None:
    import scf_nb.server
    from scf_nb.server.extension import ScfNbApp

    assert scf_nb.server._jupyter_server_extension_points() == [{"module": "scf_nb.server", "app": ScfNbApp}]
    assert ScfNbApp.name == "scf_nb"
    app = ScfNbApp()
    assert app.tc_port == 0 and {"secret_id", "secret_key", "home"} <= set(app.trait_names())
