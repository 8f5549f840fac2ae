"""The OpenAI-compatible HTTP API over served models (FastAPI; run by uvicorn in ``herd serve``).

Every model answers in the template it was trained with: chat messages are rendered by the artifact's
own template, never a guessed one. Limits are checked before generation starts, so a bad request costs
nothing and gets an OpenAI-style 4xx body.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import herd.serve.protocol as P
from herd.core.errors import HerdError
from herd.serve.guard import Guard
from herd.serve.jobs import GenParams, Overloaded
from herd.serve.models import ServedModel


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096  # no request may ask for more new tokens than this
    default_max_tokens: int = 512  # chat requests without max_tokens (capped by the context left)
    guard_input: bool = True  # with a guard: refuse flagged chat input
    guard_output: bool = True  # with a guard: withhold flagged output (streams are then sent at the end)


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def create_app(models: list[ServedModel], config: ServerConfig | None = None,
               guard: Guard | None = None) -> FastAPI:
    """The OpenAI-compatible app over ``models`` (each under its lineage name), moderated by ``guard``."""
    srv = _Server(models, config or ServerConfig(), guard)
    app = FastAPI(title="herd", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    app.get("/health")(srv.health)
    app.get("/v1/models")(srv.list_models)
    app.get("/v1/models/{model_id:path}")(srv.get_model)
    app.post("/v1/chat/completions")(srv.chat)
    app.post("/v1/completions")(srv.completions)
    app.post("/v1/moderations")(srv.moderations)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """OpenAI-style error bodies for herd's errors, unknown routes and anything unexpected."""
    @app.exception_handler(P.APIError)
    async def _api_error(_, e: P.APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(P.APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_, e: Exception):
        err = P.APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(err.body(), status_code=500)


class _Server:
    """The server's state (models, settings, guard) and its request handlers, one method per route."""

    def __init__(self, models: list[ServedModel], cfg: ServerConfig, guard: Guard | None):
        self.models, self.cfg, self.guard = models, cfg, guard
        self.by_id = {m.id: m for m in models}
        if len(self.by_id) != len(models):
            raise HerdError("two served artifacts have the same name; serve them separately")

    def auth(self, request: Request) -> None:
        if self.cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise P.APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
        if not hmac.compare_digest(header[7:].strip().encode(), self.cfg.api_key.encode()):
            raise P.APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def parse(self, request: Request, schema):
        self.auth(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_body_bytes:
            raise P.APIError(413, f"request body is {declared} bytes; the limit is {self.cfg.max_body_bytes}",
                             code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.cfg.max_body_bytes:
                raise P.APIError(413, f"request body exceeds the limit of {self.cfg.max_body_bytes} bytes",
                                 code="request_too_large")
        try:
            data = json.loads(body)
        except ValueError as e:
            raise P.APIError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise P.APIError(400, "request body must be a JSON object", code="invalid_json")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            raise P.validation_error(e) from None

    def model_for(self, name: str) -> ServedModel:
        if name not in self.by_id:
            raise P.APIError(404, f"The model '{name}' does not exist; served: {', '.join(self.by_id)}",
                             param="model", code="model_not_found")
        return self.by_id[name]

    def gen_params(self, req, m: ServedModel, ids: list[int], max_tokens: int | None) -> GenParams:
        ctx = m.backend.context_length
        if max_tokens is not None and max_tokens > min(self.cfg.max_tokens_limit, ctx):
            raise P.APIError(400, f"max_tokens is {max_tokens}; this server allows at most "
                             f"{min(self.cfg.max_tokens_limit, ctx)}", param="max_tokens", code="invalid_value")
        if len(ids) + (max_tokens or 1) > ctx:
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens; the prompt has "
                             f"{len(ids)} tokens and {max_tokens or 1} new tokens were requested",
                             param="messages", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(self.cfg.default_max_tokens, ctx - len(ids))
        return GenParams(prompt_ids=ids, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                         stop=req.stop_list() + m.stop_strings, seed=req.seed)

    async def flagged(self, texts: list[str]) -> bool:
        verdicts = await run_in_threadpool(self.guard.moderate, texts)
        return any(v.flagged for v in verdicts)

    def start(self, m: ServedModel, params: GenParams) -> AsyncIterator:
        try:
            return m.backend.stream(params)
        except Overloaded as e:
            raise P.APIError(429, str(e), type="rate_limit_error", code="server_overloaded") from None

    async def collect(self, stream: AsyncIterator) -> tuple[str, str, int, int]:
        text, finish, prompt, completion = [], "stop", 0, 0
        async for d in stream:
            text.append(d.text)
            if d.finish_reason:
                finish, prompt, completion = d.finish_reason, d.prompt_tokens, d.completion_tokens
        return "".join(text), finish, prompt, completion

    async def filter_output(self, text: str, finish: str) -> tuple[str, str]:
        if self.guard is not None and self.cfg.guard_output and text and await self.flagged([text]):
            return "", "content_filter"
        return text, finish

    async def health(self):
        return {"status": "ok", "models": list(self.by_id)}

    async def list_models(self, request: Request):
        self.auth(request)
        return {"object": "list", "data": [m.card() for m in self.models]}

    async def get_model(self, model_id: str, request: Request):
        self.auth(request)
        return self.model_for(model_id).card()

    async def chat(self, request: Request):
        req = await self.parse(request, P.ChatRequest)
        m = self.model_for(req.model)
        messages = [{"role": x.role, "content": x.text()} for x in req.messages]
        if self.guard is not None and self.cfg.guard_input and await self.flagged([x["content"] for x in messages]):
            raise P.APIError(400, "the input was flagged by the moderation model", param="messages",
                             code="content_filter")
        try:
            ids = m.chat_prompt_ids(messages)
        except HerdError as e:
            raise P.APIError(400, str(e), param="messages") from None
        params = self.gen_params(req, m, ids, req.max_completion_tokens or req.max_tokens)
        stream, rid = self.start(m, params), P.new_id("chatcmpl")
        if not req.stream:
            text, finish, n_in, n_out = await self.collect(stream)
            text, finish = await self.filter_output(text, finish)
            return P.chat_response(rid, m.id, text, finish, n_in, n_out)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        buffered = self.guard is not None and self.cfg.guard_output

        async def sse():
            finish, n_in, n_out = "stop", len(ids), 0
            yield _sse(P.chat_chunk(rid, m.id, {"role": "assistant", "content": ""}))
            try:
                if buffered:
                    text, finish, n_in, n_out = await self.collect(stream)
                    text, finish = await self.filter_output(text, finish)
                    yield _sse(P.chat_chunk(rid, m.id, {"content": text}))
                else:
                    async for d in stream:
                        if d.text:
                            yield _sse(P.chat_chunk(rid, m.id, {"content": d.text}))
                        if d.finish_reason:
                            finish, n_in, n_out = d.finish_reason, d.prompt_tokens, d.completion_tokens
                yield _sse(P.chat_chunk(rid, m.id, {}, finish))
                if include_usage:
                    yield _sse({**P.chat_chunk(rid, m.id, {}), "choices": [], "usage": P.usage(n_in, n_out)})
            except Exception as e:  # headers are sent: report in-band, as OpenAI does
                yield _sse(P.APIError(500, f"{type(e).__name__}: {e}", type="server_error").body())
            yield _sse("[DONE]")

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def completions(self, request: Request):
        req = await self.parse(request, P.CompletionRequest)
        m = self.model_for(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise P.APIError(400, "send one prompt per request", param="prompt")
        params = self.gen_params(req, m, m.completion_prompt_ids(prompts[0]), req.max_tokens)
        stream, rid = self.start(m, params), P.new_id("cmpl")
        if not req.stream:
            text, finish, n_in, n_out = await self.collect(stream)
            return P.completion_response(rid, m.id, text, finish, n_in, n_out)

        async def sse():
            try:
                async for d in stream:
                    if d.text or d.finish_reason:
                        yield _sse(P.completion_response(rid, m.id, d.text, d.finish_reason, chunk=True))
            except Exception as e:
                yield _sse(P.APIError(500, f"{type(e).__name__}: {e}", type="server_error").body())
            yield _sse("[DONE]")

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def moderations(self, request: Request):
        req = await self.parse(request, P.ModerationRequest)
        if self.guard is None:
            raise P.APIError(404, "this server has no moderation model (start it with a guard)",
                             code="not_found")
        texts = [req.input] if isinstance(req.input, str) else req.input
        verdicts = await run_in_threadpool(self.guard.moderate, texts)
        return {"id": P.new_id("modr"), "model": self.guard.name,
                "results": [{"flagged": v.flagged, "categories": v.categories,
                             "category_scores": v.category_scores} for v in verdicts]}
