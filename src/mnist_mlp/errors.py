"""The failures a user can fix: a command reports them as one clear line, never a traceback, and no secret in it."""

import urllib.parse


class UserError(Exception):
    """Bad input or an unusable environment; the message says what, where and what was expected."""


def redact(source: str) -> str:
    """A source fit for logs: no user, password or query string of a URL."""
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme in ("http", "https", "ftp") and (parsed.username or parsed.password or parsed.query):
        host = parsed.hostname or ""
        netloc = f"{host}:{parsed.port}" if parsed.port else host
        return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))
    return source
