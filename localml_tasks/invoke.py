"""Invoke — POST a request file to the scoring URI and show what came back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .errors import LocalmlError, Problem
from .health import FAILED_HEADER, Cause
from .router_server import DEPLOYMENT_HEADER


@dataclass
class InvokeResult:
    status: int
    latency_ms: float
    body: Any  # parsed JSON when the answer is JSON, else text
    deployment: str | None = None  # who answered (the endpoint's azureml-model-deployment header)
    script_failed: bool = False  # the debug server's 503: the scoring script failed to load


def read_request(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LocalmlError.one("request file not found", file=str(path),
                               fix="pass request=<path to a JSON file>") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalmlError.one(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno,
                               column=exc.colno, fix="the request body must be JSON") from None


def post(url: str, payload: Any, *, timeout_s: float, headers: dict[str, str] | None = None) -> InvokeResult:
    started = time.perf_counter()
    try:
        answer = requests.post(url, json=payload, timeout=timeout_s, headers=headers or {})
    except requests.ConnectionError:
        raise LocalmlError.one(f"nothing answers at {url}",
                               fix="start the endpoint with doit debug spec=<deployment.yml>") from None
    except requests.Timeout:
        raise LocalmlError.one(f"no answer from {url} within {timeout_s:.0f} s",
                               fix="check run() in the scoring script (doit logs shows the server's log)") from None
    latency_ms = (time.perf_counter() - started) * 1000
    try:
        body: Any = answer.json()
    except ValueError:
        body = answer.text
    return InvokeResult(status=answer.status_code, latency_ms=latency_ms, body=body,
                        deployment=answer.headers.get(DEPLOYMENT_HEADER),
                        script_failed=answer.status_code == 503 and answer.headers.get(FAILED_HEADER) == "failed")


def error_for(result: InvokeResult, url: str, cause: Cause | None, deployment: str | None = None) -> LocalmlError:
    message = result.body if isinstance(result.body, str) else json.dumps(result.body)
    who = f" (deployment {deployment})" if deployment else ""
    text = f"the endpoint answered {result.status} at {url}{who}: {message.strip()[:2000]}"
    if cause is None:
        return LocalmlError.one(text, fix="the server's log may say more: doit logs")
    return LocalmlError([Problem(
        f"{text}\n  cause{cause.described()}",
        file=cause.user_file, line=cause.user_line,
        fix="fix run() in the scoring script, then doit debug and invoke again",
    )])
