"""A pluggable judge: a model that rates generated text, behind one interface (`complete(prompts)`).

  * `http`: an OpenAI-compatible chat-completions endpoint. Its base URL (e.g. https://api.openai.com/v1)
    comes from HARNESS_JUDGE_URL and its key from HARNESS_JUDGE_API_KEY, from the environment only (a
    key in the judge settings is refused: settings are recorded). The key is read when a request is
    sent and goes nowhere else: not into the task's settings, the record, the logs or error messages.
    Credentials in the URL itself (user:password@, query parameters such as ?api_key=) are sent with
    the request (user:password as HTTP basic auth) but described, recorded and logged as
    `redact_url` leaves the URL: scheme, host, port and path only.
  * `local`: a causal LM run in-process with greedy decoding: a model config name of conf/model/
    (`smollm2-135m`, `tiny-random`, ...) or a Hugging Face hub id / local folder (`path`).

Requests are bounded: each has a timeout and a cap on reply tokens, and a failed one is tried once more.

`python -m harness.judge --model tiny-random` serves a local model as an OpenAI-compatible endpoint on
127.0.0.1 (loopback only): the tests judge through it over real HTTP, and several runs can share one
judge that way.
"""
from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import os
import re
import time
import base64
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import torch
from omegaconf import OmegaConf

from harness import models
from harness.generation import greedy_generate
from harness.progress import progress

URL_ENV = "HARNESS_JUDGE_URL"
KEY_ENV = "HARNESS_JUDGE_API_KEY"
ATTEMPTS = 2
# Judge settings that would put a secret into the recorded config.
SECRET_SETTINGS = ("api_key", "key", "token", "password", "secret", "authorization", "url")


def redact_url(url: str) -> str:
    """The URL without what may hold a credential: user:password@ and the query string."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_settings(spec: dict[str, Any]) -> None:
    """Refuse judge settings that would carry a secret into the record (and name the environment)."""
    secret = sorted(key for key in spec if key.lower() in SECRET_SETTINGS)
    if secret:
        raise ValueError(
            f"judge.{secret[0]}: the judge's URL and key come from the environment only ({URL_ENV}, {KEY_ENV}); "
            "judge settings are recorded with every run"
        )


class HttpJudge:
    def __init__(self, model: str, max_tokens: int = 256, timeout_s: float = 120.0) -> None:
        url = os.environ.get(URL_ENV, "").rstrip("/")
        if not url:
            raise ValueError(f"judge kind=http: set {URL_ENV} to an OpenAI-compatible base URL (and {KEY_ENV} to its key)")
        parts = urllib.parse.urlsplit(url)
        # urllib sends no user:password@ of a URL: it becomes a basic-auth header, and the URL loses it.
        self._basic_auth = (
            base64.b64encode(f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}".encode()).decode()
            if parts.username or parts.password else None
        )
        self._endpoint = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/") + "/chat/completions", parts.query, "")
        )
        self.url = redact_url(url)  # what is described, recorded and put in error messages
        self.model, self.max_tokens, self.timeout_s = model, max_tokens, timeout_s

    def describe(self) -> dict[str, Any]:
        return {"kind": "http", "model": self.model, "url": self.url, "max_tokens": self.max_tokens}

    def complete(self, prompts: list[str]) -> list[str]:
        return [self._ask(prompt) for prompt in progress(prompts, "judge requests", unit="request")]

    def _ask(self, prompt: str) -> str:
        body = json.dumps({
            "model": self.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": self.max_tokens,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[KEY_ENV]}"
        elif self._basic_auth:
            headers["Authorization"] = f"Basic {self._basic_auth}"
        request = urllib.request.Request(self._endpoint, data=body, headers=headers)
        for attempt in range(ATTEMPTS):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.load(response)["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError) as err:
                if attempt + 1 == ATTEMPTS:
                    # The reason and status only: the request (and its key) stays out of the message.
                    raise RuntimeError(f"judge at {self.url} failed after {ATTEMPTS} attempts: {_reason(err)}") from None
                time.sleep(1)


def _reason(err: Exception) -> str:
    return f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else str(getattr(err, "reason", err))


class LocalJudge:
    def __init__(self, model: str, max_tokens: int = 256, device: str = "cpu", batch_size: int = 4) -> None:
        self.name, self.max_tokens, self.batch_size = model, max_tokens, batch_size
        self.tokenizer, self.model = _load_local(model, device)

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "model": self.name, "max_tokens": self.max_tokens, "decoding": "greedy"}

    def complete(self, prompts: list[str]) -> list[str]:
        return greedy_generate(
            self.model, self.tokenizer, [as_chat(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts],
            max_new_tokens=self.max_tokens, batch_size=self.batch_size,
        )


@functools.lru_cache(maxsize=2)
def _load_local(model: str, device: str):
    """(tokenizer, model) of a local judge, loaded once per process: the judged tasks of a run share it."""
    model_cfg = model_config(model)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    return models.load_tokenizer(model_cfg), models.load_model(model_cfg, device, dtype, seed=0)


def model_config(model: str) -> dict[str, Any]:
    """conf/model/<model>.yaml when there is one, else a hub id or local folder."""
    path = importlib.resources.files("harness.conf") / "model" / f"{model}.yaml"
    if path.is_file():
        return OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)
    return {"name": model, "path": model}


def as_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation as the model's chat template writes it, ready for the assistant's turn; plain
    'User: ... / Assistant:' lines for a tokenizer without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def make_judge(spec: dict[str, Any]):
    """A judge from a task's `judge` settings: {kind: http|local, model, max_tokens} plus the kind's own
    options (http: timeout_s; local: device, batch_size)."""
    kinds = {"http": HttpJudge, "local": LocalJudge}
    check_settings(spec)
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in kinds:
        raise ValueError(f"judge kind={kind!r}: expected one of {', '.join(kinds)}")
    return kinds[kind](**options)


def parse_rating(reply: str, pattern: str, low: int, high: int) -> float | None:
    """The rating the reply states in `pattern`'s first group, if it lies in [low, high]; else None."""
    match = re.search(pattern, reply)
    if not match:
        return None
    rating = float(match.group(1))
    return rating if low <= rating <= high else None


def rate(judge, prompts: list[str], pattern: str, low: int, high: int) -> list[dict[str, Any]]:
    """The judge's reply to every prompt and the rating parsed from it (None when it states none)."""
    return [{"rating": parse_rating(reply, pattern, low, high), "reply": reply} for reply in judge.complete(prompts)]


def rated_fraction(ratings: list[dict[str, Any]]) -> float:
    """Share of the judge's replies that stated a rating: a score over few rated replies means little,
    and a judge that rates nothing leaves only this metric."""
    return sum(r["rating"] is not None for r in ratings) / len(ratings) if ratings else float("nan")


# --- a local model as an OpenAI-compatible endpoint ----------------------------------------------


def serve(model: str, port: int, max_requests: int | None, required_key: str | None) -> None:
    """Answer POST /v1/chat/completions with `model` on 127.0.0.1:`port` (0: any free port), printing
    the base URL once listening; stop after `max_requests` requests when given."""
    judge = LocalJudge(model, max_tokens=256)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if urllib.parse.urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            if required_key and self.headers.get("Authorization") != f"Bearer {required_key}":
                return self._send(401, {"error": {"message": "bad or missing API key"}})
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = as_chat(judge.tokenizer, request["messages"])
            (reply,) = greedy_generate(
                judge.model, judge.tokenizer, [prompt], max_new_tokens=min(int(request.get("max_tokens", 256)), 256)
            )
            self._send(200, {"model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # requests are not logged (their headers hold the key)
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)  # loopback only
    print(f"listening on http://127.0.0.1:{server.server_port}/v1", flush=True)
    handled = 0
    while max_requests is None or handled < max_requests:
        server.handle_request()
        handled += 1
    server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a local model as an OpenAI-compatible judge on 127.0.0.1.")
    parser.add_argument("--model", required=True, help="a conf/model name, hub id or local folder")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    parser.add_argument("--max-requests", type=int, default=None, help="stop after this many requests")
    args = parser.parse_args()
    serve(args.model, args.port, args.max_requests, os.environ.get(KEY_ENV))


if __name__ == "__main__":
    main()
