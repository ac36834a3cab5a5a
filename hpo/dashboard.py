"""optuna-dashboard on a study's storage, served by the standard library's WSGI server."""

import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore

from hpo.config import ConfigError
from hpo.curves import artifacts_folder
from hpo.storage import open_existing_storage


class QuietRequestHandler(WSGIRequestHandler):
    """The dashboard polls every few seconds; one log line per request would bury the URL."""

    def log_message(self, format: str, *args) -> None:
        pass


def make_dashboard_server(study_name: str, storage_url: str, host: str, port: int) -> tuple[WSGIServer, str]:
    """A server for the dashboard (port 0 picks a free one) and the URL of the study's page."""
    storage = open_existing_storage(study_name, storage_url)
    study_id = storage.get_study_id_from_name(study_name)
    artifacts = artifacts_folder(study_name)  # the trials' training curves (hpo/curves.py)
    artifacts.mkdir(parents=True, exist_ok=True)
    application = optuna_dashboard.wsgi(storage, artifact_store=FileSystemArtifactStore(str(artifacts)))
    try:
        server = make_server(host, port, application, handler_class=QuietRequestHandler)
    except OSError as error:
        raise ConfigError(
            f"cannot serve the dashboard on --host {host} --port {port}: {error.strerror}; "
            "pick another --port (0 picks a free one)"
        ) from error
    return server, f"http://{host}:{server.server_port}/dashboard/studies/{study_id}"


def serve_dashboard(study_name: str, storage_url: str, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C), printing the study's URL first."""
    server, url = make_dashboard_server(study_name, storage_url, host, port)
    print(f"dashboard of study {study_name!r}: {url}  (Ctrl-C stops it)", flush=True)
    # Requests are served on a helper thread, so Ctrl-C always reaches this one; raised inside a request,
    # wsgiref's handler would swallow it and the server would go on.
    serving = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    serving.start()
    try:
        serving.join()
    except KeyboardInterrupt:
        server.shutdown()
    finally:
        server.server_close()
