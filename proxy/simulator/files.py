"""The Files API in memory: resumable uploads (wire reference 1.4), get, list and delete.

Only metadata outlives an upload: the bytes are hashed and dropped at ``finalize``, so memory
is bounded by the in-flight uploads (``MAX_PENDING_BYTES``) and the file count.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from proxy.simulator.paging import PageError, paginate
from proxy.simulator.wire import Reply, error_reply, json_reply, rfc3339

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PENDING_BYTES = 256 * 1024 * 1024
MAX_PENDING_UPLOADS = 100
MAX_FILES = 10_000
FILE_TTL_SECONDS = 48 * 3600
CHUNK_GRANULARITY = 8 * 1024 * 1024
GOOGLE_ORIGIN = "https://generativelanguage.googleapis.com"


@dataclass(slots=True)
class Upload:
    upload_id: str
    version: str
    display_name: str | None
    mime_type: str
    declared_size: int | None
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_id: str
    version: str
    display_name: str | None
    mime_type: str
    size: int
    sha256_hex: str
    created: float

    @property
    def expires(self) -> float:
        return self.created + FILE_TTL_SECONDS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": f"files/{self.file_id}"}
        if self.display_name:
            out["displayName"] = self.display_name
        out.update(
            {
                "mimeType": self.mime_type,
                "sizeBytes": str(self.size),
                "createTime": rfc3339(self.created),
                "updateTime": rfc3339(self.created),
                "expirationTime": rfc3339(self.expires),
                # Google sends the hex digest, base64-encoded as proto ``bytes``.
                "sha256Hash": base64.b64encode(self.sha256_hex.encode()).decode(),
                "uri": f"{GOOGLE_ORIGIN}/{self.version}/files/{self.file_id}",
                "state": "ACTIVE",
                "source": "UPLOADED",
            }
        )
        return out


def _upload_error(code: int, message: str) -> Reply:
    # The SDK resends a chunk whose answer lacks this header (sleeping 1, 2, 4 s); a failed
    # upload is over, so say so and let it raise at once.
    return error_reply(code, message, headers=(("x-goog-upload-status", "final"),))


def _file_missing(file_id: str) -> Reply:
    # Google answers 403, not 404, for a file that does not exist.
    return error_reply(
        403, f"You do not have permission to access the File {file_id} or it may not exist."
    )


@dataclass(slots=True)
class FileStore:
    """Uploads in progress and finished files, with lazy expiry."""

    seed: int = 0
    _uploads: dict[str, Upload] = field(default_factory=dict)
    _files: dict[str, StoredFile] = field(default_factory=dict)
    _counter: int = 0

    def start(
        self,
        *,
        version: str,
        upload_url_base: str,
        headers: dict[str, str],
        body: dict[str, Any],
    ) -> Reply:
        """``X-Goog-Upload-Command: start``: open a session and hand back its URL."""
        meta = body.get("file") or {}
        if not isinstance(meta, dict):
            return error_reply(400, "Invalid value at 'file': expected an object.")
        declared = headers.get("x-goog-upload-header-content-length")
        size_field = meta.get("sizeBytes", meta.get("size_bytes"))
        try:
            size = int(declared) if declared is not None else _int_or_none(size_field)
        except (TypeError, ValueError):
            return error_reply(400, "Invalid file size in the upload request.")
        if size is not None and (size < 0 or size > MAX_FILE_BYTES):
            return error_reply(400, f"File size exceeds the simulator's limit of {MAX_FILE_BYTES}.")
        if len(self._uploads) >= MAX_PENDING_UPLOADS:
            return error_reply(429, "Too many uploads in progress.")
        mime = (
            headers.get("x-goog-upload-header-content-type")
            or meta.get("mimeType")
            or meta.get("mime_type")
            or "application/octet-stream"
        )
        display = meta.get("displayName", meta.get("display_name"))
        upload = Upload(
            upload_id=secrets.token_urlsafe(24),
            version=version,
            display_name=display if isinstance(display, str) else None,
            mime_type=str(mime),
            declared_size=size,
        )
        self._uploads[upload.upload_id] = upload
        url = f"{upload_url_base}?upload_id={upload.upload_id}&upload_protocol=resumable"
        return Reply(
            200,
            b"",
            None,
            (
                ("x-goog-upload-url", url),
                ("x-goog-upload-status", "active"),
                ("x-goog-upload-chunk-granularity", str(CHUNK_GRANULARITY)),
                ("x-guploader-uploadid", upload.upload_id),
            ),
        )

    def chunk(
        self, upload_id: str, command: str, offset: str | None, data: bytes, now: float
    ) -> Reply:
        """A follow-up POST to the upload URL: ``upload``, ``finalize``, ``query`` or ``cancel``."""
        upload = self._uploads.get(upload_id)
        if upload is None:
            return _upload_error(404, "Upload session not found.")
        commands = {part.strip().lower() for part in command.split(",") if part.strip()}
        if "cancel" in commands:
            del self._uploads[upload_id]
            return Reply(200, b"", None, (("x-goog-upload-status", "cancelled"),))
        if "query" in commands:
            return self._status(upload, "active")
        if not commands or not commands <= {"upload", "finalize"}:
            return _upload_error(400, f"Unsupported X-Goog-Upload-Command: {command!r}.")
        if "upload" in commands:
            if offset is None or not offset.isdigit() or int(offset) != len(upload.data):
                return _upload_error(
                    400, f"X-Goog-Upload-Offset must be {len(upload.data)}, got {offset!r}."
                )
            if len(upload.data) + len(data) > MAX_FILE_BYTES:
                del self._uploads[upload_id]
                return _upload_error(
                    400, f"File exceeds the simulator's limit of {MAX_FILE_BYTES}."
                )
            if self._pending_bytes() + len(data) > MAX_PENDING_BYTES:
                return _upload_error(429, "Too many bytes in uploads in progress.")
            upload.data.extend(data)
        if "finalize" not in commands:
            return self._status(upload, "active")
        del self._uploads[upload_id]
        if upload.declared_size is not None and upload.declared_size != len(upload.data):
            return _upload_error(
                400,
                f"Received {len(upload.data)} bytes but {upload.declared_size} were declared.",
            )
        self._forget_expired(now)
        if len(self._files) >= MAX_FILES:
            return _upload_error(429, f"The simulator keeps at most {MAX_FILES} files.")
        stored = StoredFile(
            file_id=self._new_id(),
            version=upload.version,
            display_name=upload.display_name,
            mime_type=upload.mime_type,
            size=len(upload.data),
            sha256_hex=hashlib.sha256(upload.data).hexdigest(),
            created=now,
        )
        self._files[stored.file_id] = stored
        return json_reply({"file": stored.to_json()}).with_headers(
            ("x-goog-upload-status", "final"),
            ("x-goog-upload-size-received", str(stored.size)),
        )

    def get(self, file_id: str, now: float) -> Reply:
        self._forget_expired(now)
        stored = self._files.get(file_id)
        return _file_missing(file_id) if stored is None else json_reply(stored.to_json())

    def delete(self, file_id: str, now: float) -> Reply:
        self._forget_expired(now)
        if self._files.pop(file_id, None) is None:
            return _file_missing(file_id)
        return json_reply({})

    def list(self, page_size: str | None, page_token: str | None, now: float) -> Reply:
        self._forget_expired(now)
        files = sorted(self._files.values(), key=lambda f: f.created, reverse=True)
        try:
            page, next_token = paginate(files, page_size, page_token, default=10, maximum=100)
        except PageError as exc:
            return error_reply(400, str(exc))
        body: dict[str, Any] = {}
        if page:
            body["files"] = [stored.to_json() for stored in page]
        if next_token:
            body["nextPageToken"] = next_token
        return json_reply(body)

    def _status(self, upload: Upload, status: str) -> Reply:
        return Reply(
            200,
            b"",
            None,
            (
                ("x-goog-upload-status", status),
                ("x-goog-upload-size-received", str(len(upload.data))),
            ),
        )

    def _pending_bytes(self) -> int:
        return sum(len(upload.data) for upload in self._uploads.values())

    def _new_id(self) -> str:
        # Derived from the seed and a counter: names are reproducible run to run.
        self._counter += 1
        digest = hashlib.sha256(f"file:{self.seed}:{self._counter}".encode()).digest()
        return base64.b32encode(digest).decode().lower()[:12]

    def _forget_expired(self, now: float) -> None:
        for file_id in [k for k, f in self._files.items() if f.expires <= now]:
            del self._files[file_id]


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    return int(value)
