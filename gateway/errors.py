"""Every error the gateway returns is OpenAI-shaped: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import ast
import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("forgetless.gateway")

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 500: "internal_error",
    502: "upstream_error", 503: "service_unavailable", 504: "timeout_error",
}


#: FastAPI's message when reading the body raised something other than a JSON syntax error: with UTF-8 checked
#: before (limits.py), that is a RecursionError from a body nested thousands of levels deep
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


#: a union's branch in a pydantic error location ('str', 'list[ContentPart]', 'ContentPart', ...), not a field
_BRANCH = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|[\w-]+\[.*\])$")


def _clean(loc) -> tuple:
    """A pydantic error location as the client wrote the field: without FastAPI's source ('body', 'query', ...)
    in front and without union branches."""
    loc = tuple(loc)[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else tuple(loc)
    return tuple(p for p in loc if not (isinstance(p, str) and _BRANCH.match(p)))


#: vLLM's validation message: "1 validation error:\n  {'type': ..., 'loc': 'body.top_k', 'msg': ..., ...}"
_VLLM_DUMP = re.compile(r"^\d+ validation errors?:\s*\n\s*(\{.*?\})\s*(?:\n|$)")


def upstream_error_body(status: int, detail: bytes) -> dict:
    """An error vLLM answered, in OpenAI's shape throughout: the OpenAI `type` for the status (vLLM says "Bad
    Request" or "BadRequestError"), `param` without vLLM's `body.` prefix, and one line of message (vLLM's
    multi-line dump of pydantic errors becomes "'top_k': Input should be a valid integer ..." like the
    gateway's own). Anything that is not vLLM's JSON error keeps its first 500 characters, on one line."""
    try:
        doc = json.loads(detail)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, str):  # {"error": "Unauthorized"}
            err = {"message": err}
        if not isinstance(err, dict):
            raise ValueError
    except (ValueError, RecursionError):
        return error_body(status, " ".join(detail.decode(errors="replace").split())[:500] or f"upstream answered {status}")
    message, param = str(err.get("message") or ""), err.get("param")
    param = _dotted_field(param) if isinstance(param, str) else None
    dump = _VLLM_DUMP.match(message)
    if dump:
        try:
            first = ast.literal_eval(dump.group(1))
            field = _dotted_field(str(first["loc"]))
            message = f"'{field}': {first['msg']}"
            param = param or field
        except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
            pass
    code = err.get("code")
    return error_body(status, " ".join(message.split()) or f"upstream answered {status}", param,
                      code if isinstance(code, str) else None)


def _dotted_field(path: str) -> str:
    """vLLM's 'body.messages.0.content' as the gateway writes fields: 'messages[0].content'."""
    parts = path.split(".")
    return _field(tuple(int(p) if p.isdigit() else p for p in parts)) if path else path


def _field(loc: tuple) -> str:
    parts = [str(p) for p in _clean(loc)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _most_specific(errors: list[dict]) -> tuple[dict, list[dict]]:
    """The error to report, and the other union branches that failed at the same place. For a field whose type
    is a union pydantic reports one error per branch; the deepest one under the first error's field says what is
    wrong (`messages[0].content[0].text`, not the string branch of `messages[0].content`)."""
    located = [(_clean(e.get("loc", ())), e) for e in errors]
    first = located[0][0]
    under = [(loc, e) for loc, e in located if loc[:len(first)] == first]
    at, err = max(under, key=lambda le: len(le[0]))  # the first of the deepest
    return err, [e for loc, e in under if loc == at and e is not err and e["msg"] != err["msg"]]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        err, also = _most_specific(exc.errors())
        if err.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}",
                                  code="invalid_json")
        field = _field(tuple(err.get("loc", ())))
        if err.get("type") == "missing":
            msg = f"'{field}' is required"
        else:
            msg = f"'{field}': {err['msg']}"
            wants = [e["msg"].split(",")[0] for e in (err, *also) if e["msg"].startswith("Input should be ")]
            if also and len(wants) == 1 + len(also):  # no branch of a union fits: "... a valid string or a valid list"
                msg = f"'{field}': " + " or ".join([wants[0], *(w[len("Input should be "):] for w in wants[1:])])
        return error_response(400, msg, param=field, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:  # its parser raised something not JSON's
            return error_response(400, "request body could not be parsed as JSON (nested too deeply?)", code="invalid_json")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # never a traceback to the client
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal gateway error; see the gateway log", code="internal_error")
