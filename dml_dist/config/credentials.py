"""Credentials stay in the environment: a URI that carries them is refused wherever it enters.

A storage or shard URI may name credentials (``s3://KEY:SECRET@bucket/run``: ``pyarrow.fs``
accepts them there, as userinfo; presigned ``https://...?X-Amz-Signature=...`` URLs carry them
in the query). A run prints its storage and run directory, writes its config to
``config.yaml``, and a submitted job carries its flags in its entrypoint, which anyone who can
list the cluster's jobs reads. Rather than redact each of those places, such a URI is refused
where it enters (every string of the config when it is validated, and the ``--storage`` and
``--run-dir`` flags of ``train``, ``tune`` and ``submit``), in one line that does not repeat it
and says where credentials go: the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), which ``pyarrow.fs`` reads on every node.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel

from dml_dist import storage

SECRET_QUERY_KEYS = frozenset(
    {
        "access_key",
        "secret_key",
        "session_token",
        "token",
        "password",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
"""Query parameters that hold a credential (lower case)."""

HINT = (
    "put credentials in the environment instead (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "GOOGLE_APPLICATION_CREDENTIALS, ...), where every node's storage client reads them"
)


def has_credentials(value: str) -> bool:
    """True for a URI with userinfo (``scheme://user[:secret]@host``) or a credential in its query."""
    if storage.is_local(value):
        return False
    parts = urlsplit(value)
    if "@" in parts.netloc:
        return True
    return any(key.lower() in SECRET_QUERY_KEYS for key, _ in parse_qsl(parts.query, keep_blank_values=True))


def refuse_credentials(value: str | None, what: str) -> None:
    """``ValueError`` naming ``what`` (a field or flag), without the value, when ``value`` carries credentials."""
    if value is not None and has_credentials(value):
        scheme = urlsplit(value).scheme
        raise ValueError(f"{what}: a {scheme}:// URI with credentials in it is refused (not printed or saved); {HINT}")


def refuse_credentials_in_config(config: Any) -> None:
    """``refuse_credentials`` on every string of a config (sections, dicts and lists, any depth),
    naming the field (``train.storage``, ``loss.params.x``)."""
    for path, value in _strings(config, ""):
        refuse_credentials(value, path)


def _strings(node: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(node, str):
        return [(path, node)]
    if isinstance(node, BaseModel):
        items = [(name, getattr(node, name)) for name in type(node).model_fields]
    elif isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return []
    return [found for name, value in items for found in _strings(value, f"{path}.{name}" if path else name)]
