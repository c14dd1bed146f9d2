"""What the tests share that is not a fixture: helpers and the building blocks of conftest.py's fixtures.

    paths          ROOT (the repo), BIN (the venv's bin folder)
    cli            cli_in_process (`mnist-mlp ...` in this process), run (a command, checked)
    params         TINY_PARAMS, default_params, merge, tiny_params (a params.yaml of the tiny defaults)
    mnist_files    synthetic MNIST in the real IDX format: write_idx, synthetic_digits, write_tiny_mnist,
                   write_checksums (MNIST_CHECKSUMS for a mirror)
    project        the throwaway git + DVC project: build_template (once a session), copy_project (per test)
    digit_images   digits drawn with Pillow's font, and a tiny model that reads them
    app            small real models and a sweep of them in MLflow (the app's tests)
    faults         run a stage as a user does, snapshot outputs (the fault and bad-input tests)
    sweep          a real queued sweep, its runs in the store
    browser        headless Chromium helpers (the fixtures are in conftest.py)
    server         a real tracking server on PostgreSQL (the fixture pg_server is in conftest.py)
    docs_examples  the docs' examples as tests (tests/test_docs.py)

tests/ is on sys.path (pytest inserts the rootdir of conftest.py), so a test says
`from support.mnist_files import write_tiny_mnist`.
"""
