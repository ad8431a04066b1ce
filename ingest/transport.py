"""Where spans and scores go: Langfuse (through the `langfuse` package's API client) or a local
directory sink, chosen explicitly (`Settings.destination`).

Both raise `DeliveryError`, classified: transient failures are retried later, permanent ones
go to the dead letters. Nothing here retries by itself; `ingest.retry` decides. `check` asks the
destination once at a worker's start whether it can work at all (keys, address), so wrong keys
or a wrong URL stop the worker with Langfuse's message instead of dead-lettering run after run.
Langfuse servers differ (reference/langfuse.md): up to v4.16 the scores route takes one object per
request and answers a list with a 400 about the body's shape; the v3 line has no v2 observations
API (404) and its v1 listing may lag. The transport learns either once per process and says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.otlp import export_body

log = logging.getLogger("codex_langfuse.worker")

INGESTION_VERSION_HEADER = {"x-langfuse-ingestion-version": "4"}

# Reason classes of permanent failures, as they appear in dead letters and `status`.
REJECTED = "rejected"  # 400: Langfuse refused the data
UNAUTHORIZED = "unauthorized"  # 401: wrong keys
FORBIDDEN = "forbidden"  # 403: keys without access, suspended project
TOO_LARGE = "too_large"  # 413 for a single span
NOT_FOUND = "not_found"  # 404: wrong base URL
RETRIES_EXHAUSTED = "retries_exhausted"
# Not a dead-letter reason: the server takes one score per request; send the same scores again so.
ONE_SCORE_PER_REQUEST = "one_score_per_request"
# Answers of an observations listing the server does not have (v2 on the v3 line: 404).
NO_SUCH_LISTING = (404, 405, 501)
V1_PAGE_SIZE = 100  # the v1 listing's largest page


class DeliveryError(Exception):
    def __init__(self, message: str, *, transient: bool, reason: str = "", status: int | None = None,
                 retry_after: float | None = None, in_doubt: bool = False, body: Any = None):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.reason = reason or ("transient" if transient else REJECTED)
        self.status = status
        self.retry_after = retry_after
        # The request may have been processed although we saw no answer (timeout, reset,
        # gateway error): before sending again, ask Langfuse what it has.
        self.in_doubt = in_doubt
        self.body = body  # the answer's body, when there was one

    @property
    def too_large(self) -> bool:
        return self.status == 413


@dataclass
class ScoreOutcome:
    accepted: int
    errors: list[str]


@dataclass
class Presence:
    """What Langfuse says it holds of a trace. `realtime`: from the v2 listing, which shows a span
    once it is stored; else from the v1 listing, which may show it minutes later."""

    span_ids: set[str]
    realtime: bool = True


class Transport(Protocol):
    # True once the server has shown it takes one score per request: post_scores then takes one.
    one_score_per_request: bool

    def export(self, spans: list[Span]) -> None: ...

    def post_scores(self, scores: list[dict[str, Any]]) -> ScoreOutcome: ...

    def existing_span_ids(self, trace_id: str) -> Presence: ...

    def describe(self) -> str: ...

    def check(self) -> str: ...


def parse_retry_after(headers: dict[str, str] | None) -> float | None:
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = dt.datetime.strptime(value.strip(), "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_status(status: int, body: Any, headers: dict[str, str] | None) -> DeliveryError:
    message = f"HTTP {status}: {_body_text(body)}"
    retry_after = parse_retry_after(headers)
    if status in (408, 425, 429) or status >= 500:
        return DeliveryError(message, transient=True, status=status, retry_after=retry_after,
                             in_doubt=status in (500, 502, 504), body=body)
    reason = {400: REJECTED, 401: UNAUTHORIZED, 403: FORBIDDEN, 404: NOT_FOUND, 413: TOO_LARGE,
              422: REJECTED}.get(status, f"http_{status}")
    return DeliveryError(message, transient=False, reason=reason, status=status, body=body)


def classify_exception(exc: Exception) -> DeliveryError:
    from langfuse.api.core.api_error import ApiError

    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, ApiError) and exc.status_code is not None:
        return classify_status(exc.status_code, exc.body, exc.headers)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return DeliveryError(f"cannot connect: {exc}", transient=True)
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryError(f"timed out: {exc!r}", transient=True, in_doubt=True)
    if isinstance(exc, httpx.TransportError):
        return DeliveryError(f"connection failed: {exc!r}", transient=True, in_doubt=True)
    if isinstance(exc, ValueError):  # an answer that is not JSON: a proxy's error page
        return DeliveryError(f"unreadable answer: {exc}", transient=True, in_doubt=True)
    raise exc


def _body_text(body: Any) -> str:
    if isinstance(body, dict):
        text = body.get("message") or body.get("error") or json.dumps(body)
        issues = body.get("error")
        if body.get("message") and isinstance(issues, list):  # a validation error: say what failed
            details = [f"{'.'.join(map(str, issue.get('path') or [])) or 'body'}: {issue.get('message')}"
                       for issue in issues if isinstance(issue, dict)]
            text = f"{body['message']}: {'; '.join(dict.fromkeys(details))}"
    else:
        text = str(body)
    return str(text)[:2000]


class LangfuseTransport:
    def __init__(self, base_url: str, public_key: str, secret_key: str, timeout: float):
        from langfuse.api.client import LangfuseAPI

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.Client(timeout=timeout)
        self.api = LangfuseAPI(base_url=self.base_url, username=public_key, password=secret_key, httpx_client=self.http)
        self._options = {"max_retries": 0, "timeout_in_seconds": timeout, "additional_headers": INGESTION_VERSION_HEADER}
        self.one_score_per_request = False
        self.observations_v2 = True  # False once the server answered that it has no v2 listing
        basic = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self._headers = {"authorization": f"Basic {basic}", "content-type": "application/json",
                         **INGESTION_VERSION_HEADER}

    def describe(self) -> str:
        return f"Langfuse at {self.base_url}"

    def check(self) -> str:
        """What the keys open (project names) and the server's version; `DeliveryError` when Langfuse
        refuses the keys (401/403), is not at this address (404, not JSON) or cannot be reached."""
        try:
            projects = self.api.projects.get(request_options=self._options)
        except Exception as exc:  # noqa: BLE001
            error = classify_exception(exc)
            if error.status == 404 or (error.status is None and "unreadable answer" in error.message):
                raise DeliveryError(f"no Langfuse API at {self.base_url} ({error.message}); check "
                                    f"LANGFUSE_BASE_URL", transient=False, reason=NOT_FOUND, status=404) from exc
            raise error from exc
        names = ", ".join(p.name for p in projects.data) or "no project"
        return f"keys accepted (project {names}), server {self.server_version() or 'version unknown'}"

    def server_version(self) -> str | None:
        try:
            return self.api.health.health(request_options=self._options).version
        except Exception:  # noqa: BLE001 - the version is a nicety; auth decides
            return None

    def export(self, spans: list[Span]) -> None:
        """The spans as encoded, in one request."""
        self._post("api/public/otel/v1/traces", export_body(spans))

    def _post(self, path: str, content: bytes) -> Any:
        """POST an encoded JSON body on the API client's connection; the answer's JSON. The client's
        own methods walk every item through its `jsonable_encoder` and encode it again (the worker's
        largest cost once): the two hot routes, export and scores, go around them, nothing else."""
        try:
            answer = self.http.post(f"{self.base_url}/{path}", content=content, headers=self._headers)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, unknown ones re-raised
            raise classify_exception(exc) from exc
        try:
            body, readable = answer.json(), True
        except ValueError:
            body, readable = answer.text, False
        if not readable or not 200 <= answer.status_code < 300:
            # As the client does: an answer that is not JSON is an error, whatever its status.
            raise classify_status(answer.status_code, body, dict(answer.headers))
        return body

    def post_scores(self, scores: list[dict[str, Any]]) -> ScoreOutcome:
        """A list (202, or 207 with the refused ones), as the API of the 5.x client. A server that
        answers a list with a 400 about the body's shape (up to v4.16) takes one object per
        request: remembered for the process, and DeliveryError(ONE_SCORE_PER_REQUEST) tells the
        caller to send these scores again, one by one."""
        if self.one_score_per_request:
            if len(scores) != 1:
                raise ValueError("this server takes one score per request")
            return self._post_one_score(scores[0])
        try:
            answer = self._post("api/public/scores", orjson.dumps(scores))
        except DeliveryError as error:
            if error.status == 400 and refuses_a_list(error.body):
                self.one_score_per_request = True
                log.warning("%s takes one score per request (Langfuse up to v4.16): sending scores one by one "
                            "from now on", self.describe())
                raise DeliveryError("the server takes one score per request", transient=False,
                                    reason=ONE_SCORE_PER_REQUEST, status=400) from error
            raise
        # 207: how many were taken and why the others were not (CreateScoreBatchResults); else all were.
        if isinstance(answer, dict) and isinstance(answer.get("errors"), list) and "accepted" in answer:
            return ScoreOutcome(accepted=int(answer["accepted"]),
                                errors=[str(e.get("message") if isinstance(e, dict) else e) for e in answer["errors"]])
        return ScoreOutcome(accepted=len(scores), errors=[])

    def _post_one_score(self, score: dict[str, Any]) -> ScoreOutcome:
        # The 5.x client only posts lists: its own HTTP client (auth, base URL, headers) posts the object.
        response = self._request("api/public/scores", method="POST", json=score)
        if not 200 <= response.status_code < 300:
            raise classify_status(response.status_code, _json_body(response), dict(response.headers))
        return ScoreOutcome(accepted=1, errors=[])

    def existing_span_ids(self, trace_id: str) -> Presence:
        """The trace's span ids Langfuse holds: from the real-time v2 listing, or, on a server
        without it (the v3 line: 404), from the v1 listing, which may lag (remembered for the process)."""
        if self.observations_v2:
            try:
                return Presence(self._listed_v2(trace_id), realtime=True)
            except DeliveryError as error:
                if error.status not in NO_SUCH_LISTING:
                    raise
                self.observations_v2 = False
                log.warning("%s has no v2 observations API (%s): checking in-doubt sends with the v1 listing, "
                            "which may lag", self.describe(), error.message[:200])
        return Presence(self._listed_v1(trace_id), realtime=False)

    def _listed_v2(self, trace_id: str) -> set[str]:
        found: set[str] = set()
        cursor = None
        try:
            while True:
                page = self.api.observations.get_many(trace_id=trace_id, fields="core", limit=1000, cursor=cursor,
                                                      request_options=self._options)
                found.update(obs.id for obs in page.data)
                cursor = getattr(page.meta, "cursor", None) if page.meta else None
                if not cursor or not page.data:
                    return found
        except Exception as exc:  # noqa: BLE001
            raise classify_exception(exc) from exc

    def _listed_v1(self, trace_id: str) -> set[str]:
        # GET /api/public/observations?traceId= (the 5.x client has no method for it), page by page.
        found: set[str] = set()
        page = 1
        while True:
            response = self._request("api/public/observations", method="GET",
                                     params={"traceId": trace_id, "page": page, "limit": V1_PAGE_SIZE})
            body = _json_body(response)
            if not 200 <= response.status_code < 300:
                raise classify_status(response.status_code, body, dict(response.headers))
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise DeliveryError(f"unreadable observations listing: {str(body)[:200]}", transient=True)
            found.update(item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str))
            pages = (body.get("meta") or {}).get("totalPages") or 0
            if not data or page >= pages:
                return found
            page += 1

    def _request(self, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.api._client_wrapper.httpx_client.request(path, request_options=self._options, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise classify_exception(exc) from exc


def refuses_a_list(body: Any) -> bool:
    """The body of a 400 that is about the request's shape: an array where the schema wants an
    object (the zod issue `invalid_type` at the root, "expected object, received array")."""
    issues = body.get("error") if isinstance(body, dict) else None
    if isinstance(issues, list) and any(
            isinstance(issue, dict) and issue.get("code") == "invalid_type" and issue.get("path") in ([], None)
            and issue.get("expected") == "object" for issue in issues):
        return True
    return "expected object, received array" in json.dumps(body, default=str).lower()


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class SinkTransport:
    """Writes what would be sent to Langfuse as JSON files: `<dir>/<trace id>/<span id>.json`
    and `<dir>/<trace id>/scores/<name>.json`. Writing a file twice replaces it.

    Names never become paths unchecked: trace and span ids must be the hex Langfuse takes, and a
    score's name (anyone's text) becomes a file name only through `file_name` (plain names as they
    are; anything else cut to safe characters plus a hash of the whole). Every path is checked to
    lie inside the directory before anything is created."""

    one_score_per_request = False

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def describe(self) -> str:
        return f"local sink {self.directory}"

    def check(self) -> str:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise DeliveryError(f"cannot write the local sink {self.directory}: {exc.strerror or exc}",
                                transient=False, reason="sink_unwritable") from exc
        return "writable"

    def _inside(self, *parts: str) -> Path:
        root = self.directory.resolve()
        path = root.joinpath(*parts)
        if path.resolve() != path or not path.is_relative_to(root):  # a part that climbs, or a link out
            raise DeliveryError(f"refused to write outside the sink: {'/'.join(parts)[:200]!r}", transient=False,
                                reason=REJECTED)
        return path

    def _write(self, path: Path, payload: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        os.replace(tmp, path)

    def export(self, spans: list[Span]) -> None:
        for span in spans:
            path = self._inside(_hex_id(span.trace_id, 32, "traceId"), f"{_hex_id(span.span_id, 16, 'spanId')}.json")
            try:
                self._write(path, span.decode())
            except OSError as exc:
                raise DeliveryError(f"cannot write the sink: {exc}", transient=True) from exc

    def post_scores(self, scores: list[dict[str, Any]]) -> ScoreOutcome:
        for score in scores:
            # a run in a caller's trace scores its root observation: runs sharing a trace differ there
            name = str(score.get("name", ""))
            if score.get("observationId"):
                name = f"{score['observationId']}-{name}"
            path = self._inside(_hex_id(score.get("traceId"), 32, "traceId"), "scores", f"{file_name(name)}.json")
            try:
                self._write(path, score)
            except OSError as exc:
                raise DeliveryError(f"cannot write the sink: {exc}", transient=True) from exc
        return ScoreOutcome(accepted=len(scores), errors=[])

    def existing_span_ids(self, trace_id: str) -> Presence:
        folder = self._inside(_hex_id(trace_id, 32, "traceId"))
        return Presence({p.stem for p in folder.glob("*.json")} if folder.is_dir() else set())


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_HEX = re.compile(r"[0-9a-f]+")


def file_name(name: str) -> str:
    """A file name for any text: itself when plain (letters, digits, `_.-`, at most 100, not
    starting with a dot), else its safe characters (at most 64) and 16 hex of its SHA-256, so two
    names never share a file and none can leave the folder."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64].lstrip(".")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe}-{digest}" if safe else digest


def _hex_id(value: Any, length: int, field: str) -> str:
    if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
        raise DeliveryError(f"{field} is not {length} lowercase hex characters: {str(value)[:80]!r}",
                            transient=False, reason=REJECTED)
    return value


def make_transport(settings: Any) -> Transport:
    """The transport to the chosen destination (`NoDestination` when none was chosen)."""
    if settings.destination == "langfuse":
        return LangfuseTransport(settings.langfuse_base_url, settings.langfuse_public_key,
                                 settings.langfuse_secret_key, settings.http_timeout)
    return SinkTransport(settings.sink_dir)
