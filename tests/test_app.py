"""`mnist-mlp app`: the JSON API beside the page, against real models in a real SQLite MLflow store."""

from __future__ import annotations

import io
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlp.serving import app, predict
from mnist_mlp.tracking import queries
from ops.processes import free_port
from support.app import drawn, log_sweep, png, save_model
from support.cli import cli_in_process
from support.digit_images import write_styled_digits

SETTINGS = [("relu", 0.0), ("tanh", 0.0), ("relu", 0.5)]  # the order the runs are logged in
# the order the page shows them: numbers ascending, words in the order the sweep ran them
GRID = ["new-relu-do0", "new-relu-do0.5", "new-tanh-do0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_mlflow_db: Path) -> dict:
    """A SQLite store with an older sweep `old` (one run) and the latest sweep `new` (three runs)."""
    import mlflow

    folder = tmp_path_factory.mktemp("store")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for key in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            patch.delenv(key, raising=False)
        old = log_sweep(folder, "old", [("sigmoid", 0.2)])
        new = log_sweep(folder, "new", SETTINGS)
    mlflow.set_tracking_uri(None)
    return {"uri": uri, "old": old, "new": new}


@pytest.fixture
def store_env(store: dict, monkeypatch) -> dict:
    """MLFLOW_TRACKING_URI at the module's store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    return store


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[Path, int]:
    return write_styled_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def client(checkpoint, store_env):
    return app.create_app(app.Models(str(checkpoint))).test_client()


def post(client, data: bytes, name: str = "pad.png", query: str = ""):
    return client.post(f"/api/predict{query}", data={"image": (io.BytesIO(data), name)})


# --- the page ----------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<canvas id="pad"' in html and 'id="upload"' in html and 'id="clear"' in html
    for name in ("app.js", "app.css"):
        assert f'src="static/{name}"' in html or f'href="static/{name}"' in html
        assert client.get(f"/static/{name}").status_code == 200
    # offline: nothing is fetched from another host
    for text in (
        html,
        client.get("/static/app.js").get_data(as_text=True),
        client.get("/static/app.css").get_data(as_text=True),
    ):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


# --- answers -----------------------------------------------------------------------------


def test_the_current_model_comes_first_then_every_model_of_the_latest_sweep(client, store_env):
    listed = client.get("/api/models").get_json()
    assert listed["sweep"] == "new" and listed["notice"] is None
    assert [model["name"] for model in listed["models"]] == ["current", *GRID]
    assert listed["models"][0]["title"] == "784-64-10 relu, dropout 0.0"
    # labelled by the params that differ across the sweep
    assert [model["title"] for model in listed["models"][1:]] == [
        "activation relu, dropout 0.0",
        "activation relu, dropout 0.5",
        "activation tanh, dropout 0.0",
    ]
    assert sorted(store_env["new"]) == GRID
    assert all("error" not in model for model in listed["models"])


def test_a_growing_sweeps_new_models_reach_api_clients_without_a_page_load(
    checkpoint, tmp_path, empty_mlflow_db, monkeypatch
):
    """A study still running gains runs: predictions pick them up once the lookup is SWEEP_REFRESH_S old."""
    import mlflow

    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(key, raising=False)
    log_sweep(tmp_path, "grow", [("relu", 0.0)])
    client = app.create_app(app.Models(str(checkpoint), sweep="grow")).test_client()
    monkeypatch.setattr(app, "SWEEP_REFRESH_S", 3600.0)
    assert [model["name"] for model in post(client, png(drawn("one"))).get_json()["models"]] == [
        "current",
        "grow-relu-do0",
    ]
    log_sweep(tmp_path, "grow", [("tanh", 0.5)])  # a trial finishes while the app runs
    assert len(post(client, png(drawn("one"))).get_json()["models"]) == 2  # within the window: the list it found
    monkeypatch.setattr(app, "SWEEP_REFRESH_S", 0.0)  # the window has passed
    body = post(client, png(drawn("one"))).get_json()
    assert [model["name"] for model in body["models"]] == ["current", "grow-relu-do0", "grow-tanh-do0.5"]
    # every card names the same fields
    assert [model["title"] for model in body["models"][1:]] == [
        "activation relu, dropout 0.0",
        "activation tanh, dropout 0.5",
    ]
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("shape, digit", [("one", 1), ("zero", 0)])
def test_a_drawing_gets_every_models_digit_and_ten_probabilities(client, store_env, shape, digit):
    response = post(client, png(drawn(shape)))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [model["name"] for model in body["models"]] == ["current", *GRID]
    for model in body["models"]:
        assert model["label"] == digit, model
        assert len(model["probabilities"]) == 10 and abs(sum(model["probabilities"]) - 1) < 1e-4
        assert int(np.argmax(model["probabilities"])) == model["label"]
    # each model answers for itself: other settings, other probabilities; the same settings and seed, the same
    current, *swept = body["models"]
    assert len({tuple(model["probabilities"]) for model in swept}) == len(swept)
    assert swept[0]["title"] == "activation relu, dropout 0.0" and swept[0]["probabilities"] == current["probabilities"]


def test_the_pixels_shown_are_exactly_what_predict_makes_of_the_file(client, digits):
    for path in list(digits)[::7]:
        body = post(client, path.read_bytes(), path.name).get_json()
        np.testing.assert_allclose(np.array(body["pixels"]).reshape(-1), predict.image_pixels(path), atol=1e-4)


def test_uploaded_digits_in_every_style_are_read_like_predict_reads_them(client, checkpoint, digits):
    expected = predict.predict_files(list(digits), predict.load_classifier(str(checkpoint)), top_k=1)
    for (path, _truth), result in zip(digits.items(), expected):
        current = post(client, path.read_bytes(), path.name).get_json()["models"][0]
        assert current["name"] == "current" and current["label"] == result.label
        assert current["probabilities"][result.label] == pytest.approx(result.top_k[0][1], abs=1e-5)
    assert sum(result.label == truth for result, truth in zip(expected, digits.values())) >= 0.9 * len(digits)


def test_another_sweep_is_chosen_with_the_sweep_query(client, store_env):
    body = post(client, png(drawn("one")), query="?sweep=old").get_json()
    assert body["sweep"] == "old"
    assert [model["name"] for model in body["models"]] == ["current", *store_env["old"]]
    assert body["models"][1]["title"] == "old-sigmoid-do0.2"  # a single run: nothing differs, its name says it


def test_models_named_on_the_command_line_replace_the_sweep(checkpoint, store_env):
    import mlflow

    run_id = (
        mlflow.MlflowClient()
        .search_runs(
            [mlflow.MlflowClient().get_experiment_by_name("mnist-mlp").experiment_id], "tags.sweep_id = 'old'"
        )[0]
        .info.run_id
    )
    uri = f"runs:/{run_id}/model"
    client = app.create_app(app.Models(str(checkpoint), [uri])).test_client()
    body = post(client, png(drawn("one"))).get_json()
    assert body["sweep"] is None
    assert [(model["name"], model["label"]) for model in body["models"]] == [("current", 1), (uri, 1)]


def test_a_retrained_model_is_picked_up_without_a_restart(tmp_path, store_env):
    path = save_model(tmp_path / "model.pt")
    client = app.create_app(app.Models(str(path))).test_client()
    assert client.get("/api/models").get_json()["models"][0]["title"].endswith("relu, dropout 0.0")
    save_model(tmp_path / "retrained.pt", activation="tanh").replace(path)
    body = post(client, png(drawn("one"))).get_json()
    assert body["models"][0]["title"] == "784-64-10 tanh, dropout 0.0"


# --- bad input ---------------------------------------------------------------------------


def test_an_empty_pad_asks_for_a_digit(client):
    response = post(client, png(drawn("nothing")))
    assert response.status_code == 400
    assert "no digit found" in response.get_json()["error"]


@pytest.mark.parametrize(
    "data, name, message",
    [
        (b"%PDF-1.4 not an image", "notes.pdf", "notes.pdf: not a PNG or JPEG image"),
        (b"", "empty.png", "empty.png: empty file"),
        (png(drawn("one"))[:200], "cut.png", "cut.png: unreadable image"),
    ],
)
def test_a_file_that_is_not_a_png_or_jpeg_gets_a_clear_400(client, data, name, message):
    response = post(client, data, name)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_a_gif_is_refused_though_pillow_could_read_it(client):
    buffer = io.BytesIO()
    drawn("one").save(buffer, format="GIF")
    assert post(client, buffer.getvalue(), "one.gif").status_code == 400


def test_a_request_without_the_image_field_says_what_is_expected(client):
    response = client.post("/api/predict", data={"picture": (io.BytesIO(b"x"), "x.png")})
    assert response.status_code == 400
    assert response.get_json()["error"] == "expected a multipart/form-data field 'image' holding a PNG or JPEG"


def test_an_upload_over_the_size_limit_gets_413(client):
    response = post(client, b"\0" * (app.MAX_UPLOAD_BYTES + 1), "huge.png")
    assert response.status_code == 413
    assert response.get_json()["error"].startswith("upload larger than 8 MiB")


def test_a_small_file_of_too_many_pixels_gets_413(client):
    buffer = io.BytesIO()
    Image.new("L", (5000, 4000), 255).save(buffer, format="PNG")  # ~60 KB, 20 megapixels
    response = post(client, buffer.getvalue(), "wide.png")
    assert response.status_code == 413
    assert response.get_json()["error"] == "wide.png: 5000x4000 pixels; at most 16.8 megapixels"


def test_a_bad_sweep_id_is_a_400_and_an_unknown_one_a_notice(client):
    response = client.get("/api/models?sweep=x' or '1")
    assert response.status_code == 400 and "sweep_id" in response.get_json()["error"]
    body = post(client, png(drawn("one")), query="?sweep=never").get_json()
    assert [model["name"] for model in body["models"]] == ["current"]
    assert body["models"][0]["label"] == 1
    assert body["notice"].startswith("no finished run of sweep 'never' in experiment 'mnist-mlp'")
    assert "`make sweep`" in body["notice"]


def test_no_model_and_no_store_say_which_commands_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = app.create_app(app.Models(str(tmp_path / "models" / "model.pt"))).test_client()
    listed = client.get("/api/models").get_json()
    assert listed["models"][0]["error"] == "model.pt: model file not found; run `dvc repro` to train one"
    assert (
        listed["notice"] == "no MLflow store at mlflow.db; `make sweep` (or `make sweep-quick`) makes one with a sweep"
    )
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create one
    body = post(client, png(drawn("one"))).get_json()
    assert body["models"] == [
        {
            "name": "current",
            "title": listed["models"][0]["title"],
            "source": str(tmp_path / "models" / "model.pt"),
            "error": listed["models"][0]["error"],
        }
    ]


def test_an_unreachable_tracking_server_is_a_notice_not_a_crash(client, checkpoint, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = app.create_app(app.Models(str(checkpoint))).test_client()
    body = post(client, png(drawn("one"))).get_json()
    assert body["models"][0]["label"] == 1
    assert body["notice"].startswith(f"http://127.0.0.1:{port}: MLflow tracking server not answering (")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example:8000", "127.0.0.1:8001", "localhost:5000"]
)
def test_a_foreign_host_header_is_refused_with_403(checkpoint, store_env, host):
    client = app.create_app(app.Models(str(checkpoint)), port=8000).test_client()
    for response in (
        client.get("/", headers={"Host": host}),
        client.get("/api/models", headers={"Host": host}),
        client.post("/api/predict", headers={"Host": host}, data={"image": (io.BytesIO(png(drawn("one"))), "one.png")}),
    ):
        assert response.status_code == 403
        assert response.get_json() == {"error": f"host {host!r} refused: open the app at http://127.0.0.1:8000/"}


@pytest.mark.bad_input
def test_the_apps_own_hosts_are_served_with_or_without_the_port(checkpoint, store_env):
    client = app.create_app(app.Models(str(checkpoint)), port=8000).test_client()
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST:8000", "127.0.0.1", "localhost", "[::1]"):
        assert client.get("/api/models", headers={"Host": host}).status_code == 200, host


@pytest.mark.bad_input
def test_a_post_from_another_origin_is_refused_with_403(checkpoint, store_env):
    client = app.create_app(app.Models(str(checkpoint)), port=8000).test_client()

    def post_from(origin: str):
        return client.post(
            "/api/predict",
            headers={"Host": "127.0.0.1:8000", "Origin": origin},
            data={"image": (io.BytesIO(png(drawn("one"))), "one.png")},
        )

    for origin in ("http://evil.example", "http://127.0.0.1:8001", "https://127.0.0.1:8000", "null"):
        response = post_from(origin)
        assert response.status_code == 403, origin
        assert response.get_json() == {"error": f"origin {origin!r} refused: only the app's own page may post to it"}
    assert post_from("http://127.0.0.1:8000").status_code == 200  # the page itself
    assert (
        client.get("/api/models", headers={"Origin": "http://evil.example"}).status_code == 200
    )  # reading changes nothing


@pytest.mark.bad_input
def test_clients_see_no_store_uri_or_server_path_but_the_log_keeps_them(tmp_path, store_env, caplog):
    missing = tmp_path / "models" / "model.pt"
    client = app.create_app(app.Models(str(missing), experiment="nope")).test_client()
    response = client.get("/api/models")
    listed = response.get_json()
    assert (
        listed["notice"] == "no experiment 'nope' in the MLflow store; `make sweep` (or `make sweep-quick`) makes one"
    )
    assert listed["models"][0]["error"] == "model.pt: model file not found; run `dvc repro` to train one"
    assert str(tmp_path) not in response.get_data(as_text=True).replace(listed["models"][0]["source"], "")
    assert (
        f"no experiment 'nope' in {store_env['uri']};" in caplog.text
        and f"{missing}: model file not found" in caplog.text
    )


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "error, answer",
    [
        (
            lambda root: queries.NoRunsError(f"cannot read the sweeps in sqlite:///{root}/mlflow.db (disk I/O error)"),
            (400, "cannot read the sweeps in the MLflow store (disk I/O error)"),
        ),
        (
            lambda root: PermissionError(13, "Permission denied", f"{root}/models/model.pt"),
            (500, "internal error: PermissionError: [Errno 13] Permission denied: 'model.pt'"),
        ),
    ],
)
def test_an_error_body_names_no_server_path(client, tmp_path, monkeypatch, caplog, error, answer):
    def fail(*args, **kwargs):
        raise error(tmp_path)

    monkeypatch.setattr(app.Models, "lineup", fail)
    response = client.get("/api/models")
    assert (response.status_code, response.get_json()["error"]) == answer
    assert str(tmp_path) not in response.get_data(as_text=True)
    assert f"{tmp_path}/" in caplog.text  # the terminal keeps the whole message


@pytest.mark.bad_input
def test_a_decode_waits_for_a_free_slot_and_then_gets_503(client, monkeypatch):
    monkeypatch.setattr(app, "DECODE_WAIT_SECONDS", 0.05)
    held = 0
    try:
        while app.DECODES.acquire(blocking=False):  # every slot busy, as with that many large uploads
            held += 1
        assert held == app.DECODE_SLOTS == 2
        response = post(client, png(drawn("one")))
        assert response.status_code == 503
        assert response.get_json() == {"error": "busy: 2 images are being decoded; try again"}
    finally:
        for _ in range(held):
            app.DECODES.release()
    assert post(client, png(drawn("one"))).status_code == 200  # a slot is free again


@pytest.mark.bad_input
def test_a_16_bit_png_is_read_like_its_8_bit_version(client):
    eight = np.maximum(np.asarray(drawn("one").convert("L")), 60)  # pencil grey: clipped to 8 bits it is all white
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # 0..65535, as a scanner writes it
    assert sixteen.mode == "I;16"
    expected = post(client, png(Image.fromarray(eight)), "eight.png").get_json()
    body = post(client, png(sixteen), "sixteen.png").get_json()
    assert "error" not in body, body
    np.testing.assert_allclose(body["pixels"], expected["pixels"], atol=1e-3)
    assert body["models"][0]["label"] == 1


# --- the command -------------------------------------------------------------------------


@pytest.mark.integration  # benchmarks/app_latency.py in a subprocess: torch and MLflow imported anew
def test_measure_prints_each_models_latency(checkpoint, store_env, tmp_path, capsys):
    image = tmp_path / "one.png"
    image.write_bytes(png(drawn("one")))
    code, out, err = app_latency([str(image), "--model", str(checkpoint), "--experiment", "mnist-mlp"])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{image}: 100 passes on the CPU")
    assert lines[1].split()[0] == "preprocessing"
    assert [line.split()[0] for line in lines[2:6]] == ["current", *GRID]
    assert [line.rsplit(None, 2)[0].strip() for line in lines[6:]] == [
        "current model: preprocessing + forward",
        "all 4 models: preprocessing + forwards",
        "POST /api/predict, all models, JSON out",
    ]
    for line in lines[1:]:
        median, p90 = map(float, line.split()[-2:])
        assert 0 < median <= p90


def test_a_port_in_use_is_one_line(checkpoint, store_env, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli_in_process(
            ["app", "--model", str(checkpoint), "--experiment", "mnist-mlp", "--port", str(port)], capsys
        )
    assert code == 1
    assert err.splitlines()[-1].startswith(f"mnist-mlp app: error: 127.0.0.1:{port}: cannot listen (")
    assert "--port N" in err.splitlines()[-1]


@pytest.mark.integration  # benchmarks/app_latency.py in a subprocess: torch and MLflow imported anew
def test_measure_without_a_model_says_how_to_make_one(tmp_path, store_env, capsys):
    image = tmp_path / "one.png"
    image.write_bytes(png(drawn("one")))
    code, out, err = app_latency([str(image), "--model", str(tmp_path / "none.pt"), "--experiment", "mnist-mlp"])
    assert (code, out) == (1, "")
    assert err == f"app_latency: error: {tmp_path / 'none.pt'}: model file not found; run `dvc repro` to train one\n"


def app_latency(arguments: list[str]) -> tuple[int, str, str]:
    """benchmarks/app_latency.py (the latency measurement, out of the app) run as its users run it."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "app_latency.py"
    result = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.bad_input
def test_a_silent_connection_is_closed_and_connections_past_the_cap_are_refused(checkpoint, store_env):
    """A client that sends its request a byte at a time, or opens many connections, holds no thread for long."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with listener:
        server = app.bounded_server(
            port, app.create_app(app.Models(str(checkpoint)), port), listener.fileno(), timeout_s=1, connections=2
        )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        slow, other = (socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2))
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")  # never finishes its header
        other.sendall(b"GET /")
        time.sleep(0.3)
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert third.recv(100) == b""  # the cap: closed unanswered
        started = time.monotonic()
        assert slow.recv(100) == b"" and time.monotonic() - started < 3  # closed after its second of silence
        fine = socket.create_connection(("127.0.0.1", port), timeout=5)  # the slots are free again
        fine.sendall(f"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        assert fine.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.shutdown()
        server.server_close()
