"""Where spans and scores go: Langfuse (through the `langfuse` package's API client) or a local
directory sink, chosen explicitly (`Settings.destination`).

Both raise `DeliveryError`, classified: transient failures are retried later, permanent ones
go to the dead letters. Nothing here retries by itself; `ingest.retry` decides. `check` asks the
destination once at a worker's start whether it can work at all (keys, address), so wrong keys
or a wrong URL stop the worker with Langfuse's message instead of dead-lettering run after run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from codex_langfuse.ingest.otlp import resource_spans

INGESTION_VERSION_HEADER = {"x-langfuse-ingestion-version": "4"}

# Reason classes of permanent failures, as they appear in dead letters and `status`.
REJECTED = "rejected"  # 400: Langfuse refused the data
UNAUTHORIZED = "unauthorized"  # 401: wrong keys
FORBIDDEN = "forbidden"  # 403: keys without access, suspended project
TOO_LARGE = "too_large"  # 413 for a single span
NOT_FOUND = "not_found"  # 404: wrong base URL
RETRIES_EXHAUSTED = "retries_exhausted"


class DeliveryError(Exception):
    def __init__(self, message: str, *, transient: bool, reason: str = "", status: int | None = None,
                 retry_after: float | None = None, in_doubt: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.reason = reason or ("transient" if transient else REJECTED)
        self.status = status
        self.retry_after = retry_after
        # The request may have been processed although we saw no answer (timeout, reset,
        # gateway error): before sending again, ask Langfuse what it has.
        self.in_doubt = in_doubt

    @property
    def too_large(self) -> bool:
        return self.status == 413


@dataclass
class ScoreOutcome:
    accepted: int
    errors: list[str]


class Transport(Protocol):
    def export(self, spans: list[dict[str, Any]]) -> None: ...

    def post_scores(self, scores: list[dict[str, Any]]) -> ScoreOutcome: ...

    def existing_span_ids(self, trace_id: str) -> set[str]: ...

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
                             in_doubt=status in (500, 502, 504))
    reason = {400: REJECTED, 401: UNAUTHORIZED, 403: FORBIDDEN, 404: NOT_FOUND, 413: TOO_LARGE,
              422: REJECTED}.get(status, f"http_{status}")
    return DeliveryError(message, transient=False, reason=reason, status=status)


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
    else:
        text = str(body)
    return str(text)[:2000]


class LangfuseTransport:
    def __init__(self, base_url: str, public_key: str, secret_key: str, timeout: float):
        from langfuse.api.client import LangfuseAPI

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api = LangfuseAPI(base_url=self.base_url, username=public_key, password=secret_key,
                               httpx_client=httpx.Client(timeout=timeout))
        self._options = {"max_retries": 0, "timeout_in_seconds": timeout, "additional_headers": INGESTION_VERSION_HEADER}

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

    def export(self, spans: list[dict[str, Any]]) -> None:
        try:
            self.api.opentelemetry.export_traces(resource_spans=resource_spans(spans), request_options=self._options)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, unknown ones re-raised
            raise classify_exception(exc) from exc

    def post_scores(self, scores: list[dict[str, Any]]) -> ScoreOutcome:
        from langfuse.api.scores.types import CreateScoreBatchResults, CreateScoreRequest

        request = [CreateScoreRequest.model_validate(score) for score in scores]
        try:
            answer = self.api.scores.create(request=request, request_options=self._options)
        except Exception as exc:  # noqa: BLE001
            raise classify_exception(exc) from exc
        if isinstance(answer, CreateScoreBatchResults):
            return ScoreOutcome(accepted=answer.accepted, errors=[e.message for e in answer.errors])
        return ScoreOutcome(accepted=len(scores), errors=[])

    def existing_span_ids(self, trace_id: str) -> set[str]:
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


class SinkTransport:
    """Writes what would be sent to Langfuse as JSON files: `<dir>/<trace id>/<span id>.json`
    and `<dir>/<trace id>/scores/<name>.json`. Writing a file twice replaces it."""

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

    def _write(self, path: Path, payload: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        os.replace(tmp, path)

    def export(self, spans: list[dict[str, Any]]) -> None:
        try:
            for span in spans:
                self._write(self.directory / span["traceId"] / f"{span['spanId']}.json", span)
        except OSError as exc:
            raise DeliveryError(f"cannot write the sink: {exc}", transient=True) from exc

    def post_scores(self, scores: list[dict[str, Any]]) -> ScoreOutcome:
        try:
            for score in scores:
                self._write(self.directory / score["traceId"] / "scores" / f"{score['name']}.json", score)
        except OSError as exc:
            raise DeliveryError(f"cannot write the sink: {exc}", transient=True) from exc
        return ScoreOutcome(accepted=len(scores), errors=[])

    def existing_span_ids(self, trace_id: str) -> set[str]:
        folder = self.directory / trace_id
        return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()


def make_transport(settings: Any) -> Transport:
    """The transport to the chosen destination (`NoDestination` when none was chosen)."""
    if settings.destination == "langfuse":
        return LangfuseTransport(settings.langfuse_base_url, settings.langfuse_public_key,
                                 settings.langfuse_secret_key, settings.http_timeout)
    return SinkTransport(settings.sink_dir)
