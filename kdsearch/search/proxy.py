"""Optuna's gRPC storage proxy as a kdsearch storage: ``grpc://host:port`` for workers, ``serve_proxy`` for the
``kdsearch storage-proxy`` command that stands between them and one PostgreSQL (or other RDB) database.

Hundreds of nodes then hold one connection each to the proxy instead of a connection pool each to the
database. A client retries a call that found the proxy down (killed, restarting) with backoff, so workers
ride out a proxy restart; the proxy itself reconnects to the database on its next query.
"""

from __future__ import annotations

import functools
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import optuna

from ..errors import KdsearchError
from .retrying import retrying_class

DEFAULT_PORT = 13000
_URL = re.compile(r"^grpc://(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?/?$")


def grpc_address(url: str) -> tuple[str, int]:
    """(host, port) of ``grpc://host[:port]`` (port 13000 by default); a KdsearchError for anything else."""
    match = _URL.match(url)
    if not match:
        raise KdsearchError(
            f"storage {url!r} is not a gRPC proxy address; write grpc://HOST:PORT (the address "
            "`kdsearch storage-proxy` prints)"
        )
    return match["host"].strip("[]"), int(match["port"] or DEFAULT_PORT)


def _unavailable(err: BaseException) -> bool:
    import grpc

    return isinstance(err, grpc.RpcError) and err.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


@functools.cache
def client_class() -> type:
    """``GrpcStorageProxy`` whose every storage call is retried while the proxy is unreachable (``retrying.py``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.storages import GrpcStorageProxy

    names = [
        n
        for n, v in vars(GrpcStorageProxy).items()
        if callable(v) and not n.startswith("_") and n not in ("wait_server_ready", "close")
    ]
    return retrying_class(GrpcStorageProxy, names, _unavailable, lambda s: f"proxy {s._host}:{s._port}")


def open_grpc(url: str, *, wait_s: float = 30.0) -> optuna.storages.BaseStorage:
    """A client of the proxy at ``grpc://host:port``, once the proxy answers (waiting up to ``wait_s`` s)."""
    host, port = grpc_address(url)
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise KdsearchError(
            f"storage {url!r} needs grpcio, which is not installed: pip install grpcio protobuf"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        client = client_class()(host=host, port=port)
    try:
        client.wait_server_ready(timeout=wait_s)
    except ConnectionError:
        client.close()
        raise KdsearchError(
            f"no storage proxy answers at {host}:{port} (waited {wait_s:.0f} s); start one with `kdsearch "
            f"storage-proxy --storage postgresql://... --port {port}` on that host, or check the address"
        ) from None
    return client


def proxy_server(storage: optuna.storages.BaseStorage, host: str, port: int, threads: int) -> Any:
    """Optuna's gRPC proxy server for ``storage`` on ``host:port`` with ``threads`` handler threads, not yet
    started (``.start()``, ``.stop(grace)``)."""
    from optuna.storages._grpc.server import make_server  # run_grpc_proxy_server, without its endless wait

    return make_server(optuna.storages.get_storage(storage), host, port, ThreadPoolExecutor(max_workers=threads))


def serve_proxy(
    storage: optuna.storages.BaseStorage, host: str, port: int, threads: int, on_start: Callable[[str], None]
) -> None:
    """Serve ``storage`` on ``host:port`` until interrupted (Ctrl-C, TERM); ``on_start(address)`` once listening."""
    import grpc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            server = proxy_server(storage, host, port, threads)
        except RuntimeError as err:  # grpc: "Failed to bind to address"
            raise KdsearchError(f"cannot listen on {host}:{port} ({err}); pick another --port or --host") from None
    try:
        server.start()
    except (RuntimeError, grpc.RpcError) as err:
        raise KdsearchError(f"cannot listen on {host}:{port} ({err}); pick another --port or --host") from None
    on_start(f"grpc://{f'[{host}]' if ':' in host else host}:{port}")
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop(grace=2).wait()
