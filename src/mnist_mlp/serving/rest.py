"""Serving the evaluated model over REST with `mlflow models serve`.

The served model is the PixelClassifier the evaluate stage logged: POST
{"inputs": [[784 pixel values in [0, 1], row by row, light digit on black], ...]}
to /invocations and get {"predictions": [[10 probabilities], ...]}.
`mnist_mlp.serving.predict.image_pixels` turns an image file into such a row.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

DEFAULT_PORT = 5001  # 5000 is the MLflow UI's


def default_model_uri(metrics_path: str | Path) -> str:
    """`runs:/<id>/model` of the run recorded in reports/metrics.json by the evaluate stage."""
    from mnist_mlp.tracking.registry import (
        evaluated_run_id,  # here: importing it loads MLflow, which `mnist-mlp --help` must not wait for
    )

    return f"runs:/{evaluated_run_id(metrics_path, '--model-uri runs:/<run id>/model')}/model"


def is_loopback(host: str) -> bool:
    """Whether `host` accepts connections from this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


# The bounds of the server `mlflow models serve` starts (uvicorn, which reads UVICORN_* for its options): at most 32
# connections at once (a request past them gets 503 at once), 5 s for an idle connection, 30 s to answer a request.
SERVER_BOUNDS = {
    "UVICORN_LIMIT_CONCURRENCY": "32",
    "UVICORN_TIMEOUT_KEEP_ALIVE": "5",
    "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "30",
}


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> list[str]:
    # this interpreter's mlflow, and --env-manager local: no virtualenv built per model
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
    ]


def serve_verified(model_uri: str, host: str, port: int) -> int:
    """Serve `model_uri` with `mlflow models serve` until it stops; its exit code. MLflow is handed only the verified
    private copy, never the URI, so nothing of a crafted model runs; a SIGTERM to this process stops the server
    too, then the copy is removed."""
    import os
    import signal
    import subprocess

    from mnist_mlp.tracking import loading, location, store

    store_uri = location.tracking_uri()
    store.check_tracking_server(store_uri)  # before the server starts: mlflow's own retries would take minutes
    if not is_loopback(host):
        print(
            f"serve: warning: --host {host} accepts requests from other machines; the REST API has no login",
            file=sys.stderr,
        )
    with loading.verified_model(model_uri) as local:
        print(f"serving {model_uri} from {store_uri} at http://{host}:{port}/invocations", file=sys.stderr)
        quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        env = {**quiet, **os.environ, "MLFLOW_TRACKING_URI": store_uri, **loading.NO_PICKLE_ENV, **SERVER_BOUNDS}
        server = subprocess.Popen(serve_command(str(local), host, port), env=env)
        signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
        try:
            return server.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the server as well: let it finish
            return server.wait()
