"""A local MLflow store that fails (locked, damaged) as one line naming it: read from SQLite's own error code in an
exception's chain, without importing MLflow (a command that never touched the store pays nothing)."""

from __future__ import annotations

import sqlite3

from mnist_mlp.errors import UserError
from mnist_mlp.tracking.location import tracking_uri


class StoreError(UserError, RuntimeError):
    """The local MLflow store cannot be used (locked, damaged); the message names it and what to do."""


def store_failure(exc: BaseException) -> StoreError | None:
    """A one-line StoreError for a SQLite failure anywhere in `exc`'s chain (by SQLite's error code), else None."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, sqlite3.Error):
        cause = cause.__cause__ or cause.__context__
    code = getattr(cause, "sqlite_errorname", None)
    if code is None:
        return None
    uri = tracking_uri()
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreError(
            f"{uri}: the MLflow store is locked by another process ({code}); "
            "wait for it to finish, or stop it, then run again"
        )
    if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return StoreError(
            f"{uri}: the MLflow store is damaged ({code}: {cause}); "
            "restore it from a backup, or move it aside to start a new store"
        )
    return StoreError(f"{uri}: the MLflow store failed ({code}: {cause})")
