"""The gRPC proxy as a storage: its addresses, a proxy that is not there, what `kdsearch storage-proxy` refuses,
and a study run through a real proxy on loopback (its faults are in tests/parallel/test_soak.py)."""

from __future__ import annotations

import optuna
import pytest
from local_servers import free_port, storage_proxy
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.errors import KdsearchError
from kdsearch.search.proxy import grpc_address, open_grpc
from kdsearch.search.storage import StorageLock, open_storage


def test_grpc_addresses():
    assert grpc_address("grpc://proxy-host:14000") == ("proxy-host", 14000)
    assert grpc_address("grpc://proxy-host") == ("proxy-host", 13000)
    assert grpc_address("grpc://[::1]:13001/") == ("::1", 13001)
    with pytest.raises(KdsearchError, match=r"write grpc://HOST:PORT"):
        grpc_address("grpc://host:port/db")


def test_no_proxy_at_the_address_is_one_line():
    port = free_port()  # nothing listens there
    with pytest.raises(KdsearchError, match=rf"no storage proxy answers at 127.0.0.1:{port} \(waited 1 s\); start one"):
        open_grpc(f"grpc://127.0.0.1:{port}", wait_s=1)


@pytest.mark.parametrize("url", ["journal:////tmp/j.log", "grpc://127.0.0.1:13000", "sqlite:///:memory:"])
def test_storage_proxy_refuses_what_it_cannot_serve(url):
    result = CliRunner().invoke(app, ["storage-proxy", "--storage", url])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: storage-proxy serves a database") and "Traceback" not in result.output


@pytest.mark.slow
def test_a_study_and_its_lock_through_a_real_proxy(tmp_path):
    with storage_proxy(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "proxy.log") as proxy:
        storage = open_storage(proxy.url)
        study = optuna.create_study(storage=storage, study_name="tiny")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        lock = StorageLock(proxy.url, storage, "kdsearch:tiny", ".trials.lock")
        assert lock.acquire(5)
        assert sorted(s.study_name for s in storage.get_all_studies()) == ["kdsearch-lock:kdsearch:tiny:0", "tiny"]
        lock.release()
        assert [s.study_name for s in storage.get_all_studies()] == ["tiny"]
        assert len(optuna.load_study(study_name="tiny", storage=open_storage(proxy.url)).trials) == 3
        assert "storage-proxy: serving sqlite:///" in proxy.log.read_text()
