"""Every error the gateway returns is OpenAI-shaped: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

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


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}",
                                  code="invalid_json")
        field = _field(tuple(err.get("loc", ())))
        if err.get("type") == "missing":
            msg = f"'{field}' is required"
        else:
            msg = f"'{field}': {err['msg']}"
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
