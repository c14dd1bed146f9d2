"""`mnist-mlp app`: draw a digit in the browser and watch the current model and every model of a sweep answer.

The page (app_static/: plain HTML, CSS and JS, nothing fetched from elsewhere) posts the pad as a
PNG to the JSON API below. The server puts it through the preprocessing of `mnist-mlp predict`
and answers with the 28x28 pixels the models saw and each model's ten probabilities.

    GET  /api/models[?sweep=ID]    the models that answer: `current` first, then a sweep's or the command line's
    POST /api/predict[?sweep=ID]   multipart field `image` (PNG/JPEG) -> {"pixels": 28x28, "models": [...]}

Served by Flask (MLflow depends on it) on 127.0.0.1 only: a local tool for one person.
Requests under another Host (DNS rebinding) and posts from another Origin are refused (403).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_mlp.core.model import architecture
from mnist_mlp.data.mnist import INPUT_SIZE
from mnist_mlp.errors import UserError
from mnist_mlp.params import Params, validate_params
from mnist_mlp.serving import predict
from mnist_mlp.tracking import queries

DEFAULT_PORT = 8000  # 5000 is the MLflow UI's, 5001 `mnist-mlp serve`'s
CURRENT = "current"
LATEST = "latest"
# a sweep (an Optuna study) still running gains models: a lookup older than this is made again, for
# predictions too, so an API client sees a finished trial's model without reloading the page first
SWEEP_REFRESH_S = 10.0
STATIC = Path(__file__).with_name("app_static")
MAX_UPLOAD_BYTES = 8 * 2**20  # a phone photo fits; more is refused (413) before it is read
MAX_PIXELS = 4096 * 4096  # a 12-megapixel photo fits; a small file that inflates to more is refused (413)
FORMATS = ("PNG", "JPEG")  # what the page offers; no other Pillow decoder is exposed to uploads
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # what a browser on this machine calls the app
DECODE_SLOTS = 2  # a 16-megapixel upload takes ~260 MB while it is decoded; more at once could exhaust memory
DECODES = threading.BoundedSemaphore(DECODE_SLOTS)
DECODE_WAIT_SECONDS = 5.0  # then 503: a page retried later beats one that hangs
STORE_URI = re.compile(r"\b(?:sqlite|file):/*[^\s'\"`;,()]*")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/[^\s'\"`:;,()]+")  # not runs:/..., http://..., a/b


class AppError(UserError, ValueError):
    """A request or a setting the app cannot serve; `status` is the HTTP status it answers with."""

    status = 400


class TooLarge(AppError):
    status = 413


class Busy(AppError):
    status = 503


def for_client(message: str) -> str:
    """`message` without the store's URI or absolute server paths (a file keeps its name); the log keeps it whole."""
    message = STORE_URI.sub("the MLflow store", message)
    return ABSOLUTE_PATH.sub(lambda match: Path(match.group()).name or "<path>", message)


def allowed_hosts(port: int) -> set[str]:
    """The Host headers of the app's own pages: a loopback name, with the port or (as the test client sends) without."""
    return {host for name in LOOPBACK_NAMES for host in (name, f"{name}:{port}")}


@dataclass
class Entry:
    """One model that answers: loaded, or the reason it is not (with the command that makes it)."""

    name: str  # `current`, a sweep run's name, or the URI given on the command line
    title: str  # what tells it apart: its params
    source: str  # checkpoint path or MLflow model URI
    classifier: torch.nn.Module | None = None
    error: str | None = None

    def describe(self) -> dict:
        described = {"name": self.name, "title": self.title, "source": self.source}
        return {**described, "error": for_client(self.error)} if self.error else described


@dataclass
class Lineup:
    entries: list[Entry]  # the current model first
    sweep_id: str | None = None  # the sweep whose models follow it, if any
    notice: str | None = None  # why no sweep is shown, with the command that makes one

    def describe(self) -> dict:
        notice = for_client(self.notice) if self.notice else self.notice
        return {"sweep": self.sweep_id, "notice": notice, "models": [entry.describe() for entry in self.entries]}

    def messages(self) -> list[str]:
        return [message for message in (self.notice, *(entry.error for entry in self.entries)) if message]


def _load(name: str, title: str, source: str) -> Entry:
    try:
        return Entry(name, title, source, classifier=predict.load_classifier(source))
    except UserError as exc:
        return Entry(name, title, source, error=str(exc))


def checkpoint_title(source: str) -> str:
    """`784-512-512-10 relu, dropout 0.2` from a checkpoint's params; an MLflow URI is its own title."""
    if predict.is_mlflow_model(source):
        return source
    from mnist_mlp.core.checkpoint import load_checkpoint

    train = load_checkpoint(source).params.get("train", {})
    return f"{architecture(train.get('hidden_sizes', []))} {train.get('activation', '?')}, dropout {train.get('dropout', '?')}"


def arrange(models: Sequence[queries.SweepModel]) -> list[tuple[queries.SweepModel, str]]:
    """Each run with a title of the params that differ across the sweep (`activation relu, dropout 0.2`),
    in grid order: numbers ascending, words in the order the sweep ran them (relu, tanh, sigmoid)."""
    # tracking.* (the sweep id, base, trial number) names where a run is logged, not what it learned
    keys = sorted({key for model in models for key in model.params if not key.startswith("tracking.")})
    varying = [key for key in keys if len({model.params.get(key) for model in models}) > 1]
    first = [key for key in ("train.activation", "train.dropout", "train.seed") if key in varying]
    varying = first + [key for key in varying if key not in first]
    if not varying:
        return [(model, model.name) for model in models]

    def rank(key: str):
        values = [model.params.get(key, "") for model in models]
        try:
            return {value: float(value) for value in values}
        except ValueError:
            return {value: values.index(value) for value in values}

    ranks = {key: rank(key) for key in varying}
    ordered = sorted(models, key=lambda model: [ranks[key][model.params.get(key, "")] for key in varying])
    # shown without the section: `activation relu, dropout 0.2` (train.* is what a sweep varies)
    return [
        (model, ", ".join(f"{key.removeprefix('train.')} {model.params.get(key, '-')}" for key in varying))
        for model in ordered
    ]


class Models:
    """The models that answer, each loaded once and kept; the checkpoint is reloaded when it changes."""

    def __init__(
        self,
        current: str,
        uris: Sequence[str] = (),
        experiment: str = Params().tracking.experiment,
        sweep: str | None = None,
    ):
        self.current_source = str(current)
        self.uris = list(uris)
        self.experiment = experiment
        self.default_sweep = sweep  # None: the command line's URIs if any, else the latest sweep
        self._lock = threading.Lock()
        self._current: tuple[int | None, Entry] | None = None  # (checkpoint mtime, entry)
        self._uris: dict[str, Entry] = {}  # name -> entry of a URI given on the command line
        self._sweeps: dict[str, Lineup] = {}  # sweep id or `latest` -> its models, or why there are none
        self._found_at: dict[str, float] = {}  # sweep id or `latest` -> when it was looked up (monotonic)

    def lineup(self, sweep: str | None = None, refresh: bool = False) -> Lineup:
        """The current model, then the sweep's models (`sweep`, default as set up) or the URIs' models.

        `refresh` looks the sweep up in the store again (a page load does); predictions use what was found
        unless it is over SWEEP_REFRESH_S old (models already loaded are kept).
        """
        sweep = sweep or self.default_sweep
        with self._lock:
            current = self._current_entry(refresh)
            if sweep is None and self.uris:
                return Lineup([current, *(self._uri_entry(uri, refresh) for uri in self.uris)])
            sweep = sweep or LATEST
            if sweep != LATEST:
                validate_params({"tracking": {"sweep_id": sweep}}, source="sweep id")
            if refresh or time.monotonic() - self._found_at.get(sweep, -SWEEP_REFRESH_S) >= SWEEP_REFRESH_S:
                self._sweeps[sweep], self._found_at[sweep] = self._find_sweep(sweep), time.monotonic()
            found = self._sweeps[sweep]
            return Lineup([current, *found.entries], found.sweep_id, found.notice)

    def _current_entry(self, refresh: bool) -> Entry:
        source = self.current_source
        if predict.is_mlflow_model(source):
            stamp = None  # loaded once; a failed load is tried again on the next page load
            stale = self._current is None or refresh and self._current[1].error is not None
        else:  # a retrained models/model.pt is picked up at the next request
            stamp = Path(source).stat().st_mtime_ns if Path(source).is_file() else None
            stale = self._current is None or stamp is None or self._current[0] != stamp
        if stale:
            try:
                title = checkpoint_title(source)
            except UserError:
                title = source
            self._current = (stamp, _load(CURRENT, title, source))
        return self._current[1]

    def _uri_entry(self, uri: str, refresh: bool) -> Entry:
        if uri not in self._uris or refresh and self._uris[uri].error is not None:
            self._uris[uri] = _load(uri, uri, uri)
        return self._uris[uri]

    def _find_sweep(self, sweep: str) -> Lineup:
        try:
            sweep_id, models = queries.sweep_models(self.experiment, sweep)
        except UserError as exc:
            return Lineup([], notice=str(exc))
        known = {entry.source: entry for lineup in self._sweeps.values() for entry in lineup.entries if not entry.error}
        names = [model.name for model in models]
        entries = []
        for model, title in arrange(models):
            name = model.name if names.count(model.name) == 1 else f"{model.name}-{model.run_id[:8]}"
            # a model loaded before keeps its weights, not its title: the fields that differ change as a sweep grows
            loaded = known.get(model.model_uri)
            entries.append(
                dataclasses.replace(loaded, name=name, title=title) if loaded else _load(name, title, model.model_uri)
            )
        return Lineup(entries, sweep_id)


def upload_pixels(data: bytes, name: str = "image") -> np.ndarray:
    """The 28x28 pixels in [0, 1] that `mnist-mlp predict` makes of an uploaded PNG or JPEG.

    Decoded here rather than by predict.load_image (which opens a path) to check the size first;
    at most DECODE_SLOTS at a time.
    """
    if not DECODES.acquire(timeout=DECODE_WAIT_SECONDS):
        raise Busy(f"busy: {DECODE_SLOTS} images are being decoded; try again")
    try:
        return _decoded_pixels(data, name)
    finally:
        DECODES.release()


def _decoded_pixels(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise AppError(f"{name}: empty file; expected a PNG or JPEG")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise TooLarge(
                    f"{name}: {image.width}x{image.height} pixels; at most {MAX_PIXELS / 1e6:.1f} megapixels"
                )
            image.load()
            # phone photos store their rotation in EXIF instead of rotating the pixels
            image = ImageOps.exif_transpose(image)
    except AppError:
        raise
    except UnidentifiedImageError:
        raise AppError(f"{name}: not a PNG or JPEG image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AppError(f"{name}: unreadable image ({exc}); expected a PNG or JPEG") from None
    try:
        return predict.mnist_pixels(predict.grayscale(image), name=name)
    except predict.ImageError as exc:
        raise AppError(str(exc)) from None


def answers(entries: Sequence[Entry], pixels: np.ndarray) -> list[dict]:
    """Each model's digit and ten probabilities for one 28x28 image; a model that is missing says why."""
    batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32).reshape(1, INPUT_SIZE))
    out = []
    for entry in entries:
        if entry.classifier is None:
            out.append(entry.describe())
            continue
        start = time.perf_counter()
        with torch.no_grad():
            probabilities = entry.classifier(batch)[0]
        milliseconds = 1000 * (time.perf_counter() - start)
        out.append(
            {
                **entry.describe(),
                "label": int(probabilities.argmax()),
                "probabilities": [round(float(p), 6) for p in probabilities],
                "milliseconds": round(milliseconds, 3),
            }
        )
    return out


def create_app(models: Models, port: int = DEFAULT_PORT):
    from flask import Flask, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException

    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    hosts = allowed_hosts(port)
    origins = {f"http://{host}" for host in hosts}
    logged: set[str] = set()

    def failure(status: int, message: str):
        return jsonify({"error": for_client(message)}), status

    def log_whole(message: str) -> None:
        """The full text of a message the client gets without its paths, once, in the terminal."""
        if for_client(message) != message and message not in logged:
            logged.add(message)
            app.logger.warning("%s", message)

    @app.before_request
    def only_from_this_app():
        # a DNS-rebinding page reaches 127.0.0.1 under its own host name; another site's form under its origin
        host = request.host.lower()
        if host not in hosts:
            return failure(403, f"host {host!r} refused: open the app at http://127.0.0.1:{port}/")
        origin = request.headers.get("Origin")
        if origin is not None and request.method not in ("GET", "HEAD", "OPTIONS") and origin.lower() not in origins:
            return failure(403, f"origin {origin!r} refused: only the app's own page may post to it")
        return None

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/models")
    def list_models():
        lineup = models.lineup(request.args.get("sweep"), refresh=True)
        for message in lineup.messages():
            log_whole(message)
        return jsonify({**lineup.describe(), "max_upload_bytes": MAX_UPLOAD_BYTES})

    @app.post("/api/predict")
    def predict_digit():
        upload = request.files.get("image")
        if upload is None:
            return failure(400, "expected a multipart/form-data field 'image' holding a PNG or JPEG")
        name = Path(upload.filename or "image").name
        pixels = upload_pixels(upload.read(), name)
        lineup = models.lineup(request.args.get("sweep"))
        return jsonify(
            {
                "sweep": lineup.sweep_id,
                "notice": lineup.notice,
                "pixels": np.round(pixels, 4).tolist(),
                "models": answers(lineup.entries, pixels),
            }
        )

    @app.errorhandler(UserError)
    def user_error(exc: UserError):
        log_whole(str(exc))
        return failure(getattr(exc, "status", 400), str(exc))

    @app.errorhandler(413)
    def too_large(exc):
        return failure(413, f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB; expected a PNG or JPEG of a digit")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return failure(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("request failed")  # the traceback goes to the terminal; the page gets one line
        return failure(500, f"internal error: {type(exc).__name__}: {exc}")

    return app


def summary(lineup: Lineup) -> list[str]:
    lines = []
    for entry in lineup.entries:
        state = f"error: {entry.error}" if entry.error else "loaded"
        lines.append(f"{entry.name}: {entry.title} ({entry.source}) {state}")
    if lineup.sweep_id:
        lines.append(f"sweep {lineup.sweep_id}: {len(lineup.entries) - 1} model(s)")
    if lineup.notice:
        lines.append(f"no sweep shown: {lineup.notice}")
    return lines


REQUEST_TIMEOUT_S = 10  # a connection silent this long while sending its request (header or body) is closed
MAX_CONNECTIONS = 32  # served at once; a drawing page needs one or two, more are closed unanswered


def bounded_server(
    port: int, wsgi_app, fd: int, timeout_s: float = REQUEST_TIMEOUT_S, connections: int = MAX_CONNECTIONS
):
    """werkzeug's threaded server with bounds: `timeout_s` of silence per connection (a client that sends its header
    or body a byte a minute holds no thread for long), and at most `connections` at once (more are closed)."""
    import threading

    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        timeout = timeout_s  # socketserver sets it on the connection: every read waits at most this long

    class Server(ThreadedWSGIServer):
        slots = threading.BoundedSemaphore(connections)

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return Server("127.0.0.1", port, wsgi_app, handler=Handler, fd=fd)


def serve(models: Models, port: int) -> None:
    """Load the models (the first visitor must not wait for them), then serve until Ctrl-C."""

    for line in summary(models.lineup(refresh=True)):
        print(f"mnist-mlp app: {line}", file=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request while drawing
    try:  # bound here: werkzeug would print its own lines and exit
        listener = socket.create_server(("127.0.0.1", port))
    except OSError as exc:
        raise AppError(
            f"127.0.0.1:{port}: cannot listen ({exc.strerror}); choose another port: --port N (make app APP_PORT=N)"
        ) from None
    with listener:
        server = bounded_server(port, create_app(models, port), listener.fileno())
    print(f"mnist-mlp app: open http://127.0.0.1:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
