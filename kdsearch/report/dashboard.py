"""optuna-dashboard on a study's storage, with the report and the final comparison as study artifacts.

``start_dashboard`` uploads ``report.html`` and ``final_comparison.json`` (once: an artifact with
the same name and content is not uploaded again) into a ``FileSystemArtifactStore`` under
``<output_dir>/artifacts`` and returns a ``DashboardServer`` bound to its port, not yet serving:
``serve_forever()`` blocks (the CLI), ``start()`` serves from a thread (tests).
"""

from __future__ import annotations

import hashlib
import json
import socketserver
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from ..errors import KdsearchError
from ..files import write_text_atomically
from ..search.results import FinalComparison
from ..search.storage import ARTIFACT_DIR, open_storage, shown_url
from ..search.study import SPEC_ATTR, load_study, study_spec


def artifact_store(output_dir: Path) -> FileSystemArtifactStore:
    """The study's artifact store: files under ``<output_dir>/artifacts``."""
    path = Path(output_dir) / ARTIFACT_DIR
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KdsearchError(
            f"cannot create the artifact folder {path} ({err.strerror or err}); pass another --output-dir"
        ) from None
    return FileSystemArtifactStore(str(path))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_once(study: optuna.Study, store: FileSystemArtifactStore, path: Path, mimetype: str) -> tuple[str, bool]:
    """Upload ``path`` as a study artifact unless one with its name and content is there; (artifact id, uploaded?)."""
    digest = _sha256(path.read_bytes())
    for meta in get_all_artifact_meta(study):
        if meta.filename != path.name:
            continue
        try:
            with store.open_reader(meta.artifact_id) as reader:
                if _sha256(reader.read()) == digest:
                    return meta.artifact_id, False
        except (ArtifactNotFound, OSError):  # uploaded into another store (another output_dir): not readable here
            continue
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study, mimetype=mimetype), True


def upload_study_artifacts(study: optuna.Study, store: FileSystemArtifactStore, output_dir: Path) -> list[str]:
    """``report.html`` (written from storage when missing) and ``final_comparison.json`` as study artifacts.

    Nothing is uploaded before the final comparison exists. Returns one line per file for the user.
    """
    from .page import write_report

    comparison = FinalComparison.read(study)
    if comparison is None:
        return [
            f"study {study.study_name!r}: no final comparison yet, so no report artifact; when the trials are done run "
            "`kdsearch report` and start the dashboard again"
        ]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / "final_comparison.json"
    write_text_atomically(final, json.dumps(comparison.to_attr(), indent=2, sort_keys=True) + "\n")
    report = output_dir / "report.html"
    if not report.is_file():
        write_report(study, report)
    notes = []
    for path, mimetype in ((report, "text/html"), (final, "application/json")):
        _, uploaded = upload_once(study, store, path, mimetype)
        notes.append(f"artifact {path.name}: {'uploaded' if uploaded else 'already uploaded'} ({path})")
    return notes


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass


class DashboardServer:
    """optuna-dashboard's WSGI app on a bound socket (``port`` 0 picks a free one)."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage | str,
        store: FileSystemArtifactStore | None,
        host: str = "127.0.0.1",
        port: int = 8080,
    ) -> None:
        import optuna_dashboard

        self.app = optuna_dashboard.wsgi(storage, artifact_store=store)
        try:
            self._server = make_server(
                host, port, self.app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as err:
            raise KdsearchError(
                f"cannot serve the dashboard on {host}:{port}: {err.strerror or err}; "
                "pick another --port (0: any free one)"
            ) from None
        self.host = host
        self.port = self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/dashboard"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> "DashboardServer":
        """Serve from a daemon thread; ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="kdsearch-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self.close()

    def close(self) -> None:
        self._server.server_close()


def start_dashboard(
    url: str,
    *,
    study_name: str | None = None,
    output_dir: Path | None = None,
    default_output_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
) -> tuple[DashboardServer, list[str]]:
    """Upload the study's artifacts and bind the dashboard to ``host:port``; (server, lines for the user).

    The dashboard lists every study in the storage; ``study_name`` picks the one whose artifacts are
    uploaded (needed only when the storage holds several). An empty storage is served as it is,
    so the dashboard can be opened before the first trial.
    """
    storage = open_storage(url)
    notes: list[str] = []
    study = None
    if optuna.get_all_study_summaries(storage, include_best_trial=False) or study_name is not None:
        study = load_study(study_name, storage)
    if output_dir is None and study is not None and SPEC_ATTR in study.user_attrs:
        output_dir = study_spec(study).resolved_output_dir()
    output_dir = Path(output_dir or default_output_dir or Path("runs") / "dashboard")
    store = artifact_store(output_dir)
    if study is not None:
        notes += upload_study_artifacts(study, store, output_dir)
    else:
        notes.append(
            f"the storage {shown_url(url)} holds no study yet; the dashboard shows studies as they are created"
        )
    return DashboardServer(storage, store, host, port), notes
