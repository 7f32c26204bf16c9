"""The TencentCloud-compatible API inside a real ``jupyter server``: ``--ScfNbApp.tc_port`` opens it on its own
loopback port over the engine the server hosts, so the official SDK and the REST API see the same events."""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import wait_until
from server_support import free_port, jupyter_server
from tencentcloud.common.credential import Credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import scf_client
from test_tencentcloud import call, create, invoke, status_of

KEYS = {"SCF_NB_SECRET_ID": "AKIDserver", "SCF_NB_SECRET_KEY": "server-key"}


def test_the_server_serves_the_tencentcloud_api_over_its_own_engine(tmp_path: Path) -> None:
    port = free_port()
    with jupyter_server(tmp_path, env=KEYS, args=(f"--ScfNbApp.tc_port={port}",)) as server:
        profile = ClientProfile(httpProfile=HttpProfile(endpoint=f"127.0.0.1:{port}", protocol="http"))
        sdk = scf_client.ScfClient(Credential(KEYS["SCF_NB_SECRET_ID"], KEYS["SCF_NB_SECRET_KEY"]), "ap-guangzhou",
                                   profile)
        create(sdk, "tc")
        rid = invoke(sdk, "tc", {"mode": "pair", "n": 7})["FunctionRequestId"]
        wait_until(lambda: status_of(sdk, rid) == "FINISHED", 60, "the SDK's event to finish")
        # one engine: the REST API sees the event the SDK started, and the SDK lists it
        status, answer, _ = server.request("GET", f"/scf/api/events/{rid}")
        assert status == 200 and answer["info"]["status"] == "FINISHED", answer
        assert [e["InvokeRequestId"] for e in call(sdk, "ListAsyncEvents", FunctionName="tc")["EventList"]] == [rid]
        assert "TencentCloud-style API at" in server.log.read_text()


def test_without_keys_the_tencentcloud_port_stays_closed_and_the_server_runs(tmp_path: Path) -> None:
    port = free_port()
    env = {"SCF_NB_SECRET_ID": "", "SCF_NB_SECRET_KEY": ""}
    with jupyter_server(tmp_path, env=env, args=(f"--ScfNbApp.tc_port={port}",)) as server:
        assert server.request("GET", "/scf/api/engine")[0] == 200
        log = server.log.read_text()
        assert "did not start" in log and "SecretKey" in log, log[-2000:]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there
