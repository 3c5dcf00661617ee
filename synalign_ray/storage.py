"""Where data lives: a local path or s3:// resolved to an fsspec filesystem (s3fs from explicit config or the AWS
chain), existence and writability checks that name the problem in one line, and S3 key material kept out of every
message."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synalign_ray.config import StorageConfig
from synalign_ray.errors import StorageError


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def redact(text: str, storage: StorageConfig | None = None) -> str:
    """Remove any S3 key material from a message before it is logged or raised."""
    secrets = []
    if storage is not None:
        for field in (storage.access_key_id, storage.secret_access_key):
            if field is not None:
                secrets.append(field.get_secret_value())
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(var):
            secrets.append(os.environ[var])
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return re.sub(r"(?i)(aws_secret_access_key|aws_access_key_id|secret|signature)=[^&\s]+", r"\1=***", text)


@dataclass
class Location:
    """A resolved storage location: an fsspec filesystem plus the path inside it (no scheme)."""

    fs: Any
    path: str
    url: str

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts)
        url = ("s3://" + path) if is_s3(self.url) else path
        return Location(self.fs, path, url)

    def sibling(self, name: str) -> "Location":
        """The folder `name` beside this one (same parent)."""
        path = posixpath.join(posixpath.dirname(self.path.rstrip("/")), name)
        return Location(self.fs, path, ("s3://" + path) if is_s3(self.url) else path)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def pyarrow_fs(self):
        """A pyarrow filesystem over the same fsspec one (for pyarrow and Ray Data readers)."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.fs))


def s3_filesystem(storage: StorageConfig):
    """An s3fs filesystem from explicit config or the standard AWS chain (env, profile, instance role)."""
    import s3fs

    kwargs: dict[str, Any] = {"anon": storage.anon, "skip_instance_cache": True}
    client_kwargs: dict[str, Any] = {}
    if storage.endpoint_url:
        client_kwargs["endpoint_url"] = storage.endpoint_url
    if storage.region:
        client_kwargs["region_name"] = storage.region
    if client_kwargs:
        kwargs["client_kwargs"] = client_kwargs
    if storage.profile:
        kwargs["profile"] = storage.profile
    if storage.access_key_id is not None:
        kwargs["key"] = storage.access_key_id.get_secret_value()
    if storage.secret_access_key is not None:
        kwargs["secret"] = storage.secret_access_key.get_secret_value()
    # Fail fast on a dead endpoint instead of botocore's long default retry loop; s3fs retries transient errors.
    kwargs["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                               "retries": {"max_attempts": storage.max_attempts, "mode": "standard"}}
    return s3fs.S3FileSystem(**kwargs)


def resolve(path: str, storage: StorageConfig | None = None) -> Location:
    """Turn a user path (local or s3://bucket/key) into a Location."""
    storage = storage or StorageConfig()
    if is_s3(path):
        fs = s3_filesystem(storage)
        return Location(fs, str(path)[len("s3://"):].rstrip("/"), str(path).rstrip("/"))
    from fsspec.implementations.local import LocalFileSystem

    local = os.path.abspath(os.path.expanduser(str(path)))
    return Location(LocalFileSystem(), local, local)


def _s3_error(err: BaseException, loc: Location, storage: StorageConfig | None, action: str) -> StorageError:
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    bucket = loc.path.split("/", 1)[0]
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or (
        isinstance(err, FileNotFoundError) and "/" not in loc.path.strip("/")
    ):
        msg = f"cannot {action} {loc.url}: S3 bucket '{bucket}' does not exist"
    elif any(s in lowered for s in ("connect", "endpoint", "refused", "timed out", "name resolution")):
        endpoint = storage.endpoint_url if storage and storage.endpoint_url else "the default AWS endpoint"
        msg = f"cannot {action} {loc.url}: S3 endpoint {endpoint} is unreachable ({type(err).__name__})"
    elif "accessdenied" in lowered or "forbidden" in lowered or "invalidaccesskeyid" in lowered or \
            "signaturedoesnotmatch" in lowered or isinstance(err, PermissionError):
        msg = f"cannot {action} {loc.url}: access denied (check the S3 credentials)"
    else:
        msg = f"cannot {action} {loc.url}: {text}"
    return StorageError(redact(msg, storage))


def exists(loc: Location, storage: StorageConfig | None = None) -> bool:
    """Whether the path exists; on S3 a missing bucket or dead endpoint is a StorageError, not False."""
    if not is_s3(loc.url):
        return bool(loc.fs.exists(loc.path))
    bucket = loc.path.split("/", 1)[0]
    try:
        loc.fs.info(loc.path)
        return True
    except FileNotFoundError:
        pass
    except Exception as err:  # botocore/aiohttp raise many types; classify them into one message
        raise _s3_error(err, loc, storage, "read") from None
    try:
        loc.fs.ls(bucket)
    except FileNotFoundError:
        raise StorageError(f"cannot read {loc.url}: S3 bucket '{bucket}' does not exist") from None
    except Exception as err:
        raise _s3_error(err, loc, storage, "read") from None
    return False


def check_writable(loc: Location, storage: StorageConfig | None = None) -> None:
    """Fail before any work when the output location cannot be written (bucket missing, endpoint down...)."""
    if is_s3(loc.url):
        bucket = loc.path.split("/", 1)[0]
        try:
            # ls raises on a dead endpoint, where exists() would quietly answer False.
            loc.fs.ls(bucket)
            probe = loc.join(".synalign_write_probe")
            loc.fs.pipe(probe.path, b"ok")
            loc.fs.rm(probe.path)
        except StorageError:
            raise
        except Exception as err:  # botocore/aiohttp raise many types; classify them into one message
            raise _s3_error(err, loc, storage, "write to") from None
        return
    target = Path(loc.path)
    existing = target
    while not existing.exists():
        existing = existing.parent
    if existing != target and not existing.is_dir():
        raise StorageError(f"cannot write to {loc.url}: {existing} is a file, not a folder")
    if target.exists() and not target.is_dir():
        raise StorageError(f"cannot write to {loc.url}: it is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise StorageError(f"cannot write to {loc.url}: permission denied")
