"""``herd ui``'s web app: the pages (static files shipped in the package) and the JSON/SSE API they call.

The app is FastAPI, as ``herd serve`` is. It is safe by default: with an API key every request must carry
it (``Authorization: Bearer KEY``, or the cookie set by opening ``/?key=KEY`` once); every path from the
page is confined to the workspace; a derive's recipe and data are validated in-process with the CLI's own
checks, so a bad input gets the same file:line:field error before any job starts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from herd.core.errors import HerdError
from herd.ui.chat import ChatModels
from herd.ui.jobs import JobQueue
from herd.ui.resume import CannotResume, interrupted_runs, resume_argv
from herd.ui.runs import export_argv, validate_derive
from herd.ui.workspace import OutsideWorkspace, Workspace

STATIC = Path(__file__).parent / "static"
COOKIE = "herd_ui_key"


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class UIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(workspace: str | Path, *, api_key: str | None = None, job_env: dict | None = None) -> FastAPI:
    """The UI over ``workspace``; ``job_env`` adds environment variables to every background job."""
    ws = Workspace(workspace)
    jobs = JobQueue(ws.root, env=job_env)
    chats = ChatModels()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        jobs.close()  # a running job is stopped with the server (its .work folder resumes)
        chats.close()

    app = FastAPI(title="herd ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.workspace, app.state.jobs, app.state.chats = ws, jobs, chats

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key is None:
            return await call_next(request)
        given = request.query_params.get("key")
        if given is not None and hmac.compare_digest(given.encode(), api_key.encode()):
            resp = RedirectResponse(request.url.path, status_code=303)
            resp.set_cookie(COOKIE, api_key, httponly=True, samesite="strict")
            return resp
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if not token or not hmac.compare_digest(token.encode(), api_key.encode()):
            return JSONResponse({"error": "this herd ui needs its API key: open /?key=KEY once, or send "
                                          "'Authorization: Bearer KEY'"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(UIError)
    async def _ui_error(_, e: UIError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(OutsideWorkspace)
    async def _outside(_, e: OutsideWorkspace):
        return JSONResponse({"error": str(e)}, status_code=403)

    @app.exception_handler(CannotResume)
    async def _cannot_resume(_, e: CannotResume):
        return JSONResponse({"error": str(e)}, status_code=409)

    @app.exception_handler(HerdError)
    async def _herd_error(_, e: HerdError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    async def static(name: str):
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise UIError(404, f"no static file {name}")
        return FileResponse(path)

    @app.get("/api/tree")
    async def tree(catalogue: bool = True):
        return await run_in_threadpool(ws.tree, catalogue)

    @app.get("/api/artifact")
    async def artifact(path: str):
        return await run_in_threadpool(ws.artifact, path)

    @app.get("/api/files")
    async def files():
        from herd.base import named_bases
        from herd.core.paths import repo_root

        recipes = sorted(p.stem for p in (repo_root() / "recipes").glob("*.yaml"))
        return {"workspace": str(ws.root), "files": await run_in_threadpool(ws.files), "recipes": recipes,
                "bases": sorted(named_bases())}

    @app.post("/api/derive")
    async def derive(request: Request):
        body = await _json(request)
        argv, label, out = await run_in_threadpool(validate_derive, ws, body)
        return jobs.submit("derive", argv, label, out).summary()

    @app.post("/api/export")
    async def export(request: Request):
        body = await _json(request)
        argv, label, out = export_argv(ws, body)
        return jobs.submit("export", argv, label, out).summary()

    @app.get("/api/jobs")
    async def list_jobs():
        return {"jobs": [j.summary() for j in jobs.jobs.values()]}

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: int):
        if job_id not in jobs.jobs:
            raise UIError(404, f"no job {job_id}")
        return jobs.cancel(job_id).summary()

    @app.post("/api/jobs/{job_id}/resume")
    async def resume(job_id: int):
        old = jobs.jobs.get(job_id)
        if old is None or old.kind != "derive":
            raise UIError(404, f"no derive job {job_id}")
        if old.state not in ("failed", "cancelled"):
            raise UIError(409, f"job {job_id} is {old.state}; only a failed or cancelled derive resumes")
        argv = old.argv + ([] if "--resume" in old.argv else ["--resume"])
        return jobs.submit("derive", argv, old.label + " (resumed)", old.out).summary()

    def busy() -> dict[Path, int]:
        """Run folders a queued or running derive of this page writes, to its job id."""
        return {ws.resolve(j.out, must_exist=False): j.id for j in jobs.jobs.values()
                if j.kind == "derive" and j.out and j.state in ("queued", "running", "cancelling")}

    @app.get("/api/runs")
    async def runs():
        """Derives in the workspace that did not finish (from this page or the command line)."""
        return {"runs": await run_in_threadpool(interrupted_runs, ws, busy())}

    @app.post("/api/runs/resume")
    async def resume_run(request: Request):
        body = await _json(request)
        argv, label, out = await run_in_threadpool(resume_argv, ws, str(body.get("out") or ""), busy())
        return jobs.submit("derive", argv, label, out).summary()

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: int, request: Request, after: int = 0):
        job = jobs.jobs.get(job_id)
        if job is None:
            raise UIError(404, f"no job {job_id}")

        async def stream():
            i = after
            while True:
                while i < len(job.events):
                    yield _sse({**job.events[i], "i": i})
                    i += 1
                if job.state in ("done", "failed", "cancelled") and i >= len(job.events):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/api/chat")
    async def chat(request: Request):
        body = await _json(request)
        folder = await run_in_threadpool(_artifact_folder, ws, body.get("path"))
        guard = await run_in_threadpool(_artifact_folder, ws, body["guard"]) if body.get("guard") else None
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
                ("system", "user", "assistant") for m in messages):
            raise UIError(400, "messages: a non-empty list of {role, content}")
        max_tokens = int(body.get("max_tokens") or 128)
        temperature = float(body.get("temperature") or 0.0)
        if not 1 <= max_tokens <= 2048 or not 0 <= temperature <= 2:
            raise UIError(400, "max_tokens must be 1..2048 and temperature 0..2")

        async def stream():
            try:
                async for ev in chats.stream(folder, messages, max_tokens=max_tokens, temperature=temperature,
                                             guard=guard):
                    yield _sse(ev)
            except Exception as e:  # headers are sent: report in-band
                yield _sse({"error": f"{type(e).__name__}: {e}"})

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _artifact_folder(ws: Workspace, rel: str | None) -> Path:
    from herd.artifacts import locate_artifact

    if not rel:
        raise UIError(400, "choose an artifact")
    folder = locate_artifact(ws.resolve(rel))
    ws.resolve(str(folder))  # the run folder's link must not lead out either
    return folder


async def _json(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError as e:
        raise UIError(400, f"request body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise UIError(400, "request body must be a JSON object")
    return body
