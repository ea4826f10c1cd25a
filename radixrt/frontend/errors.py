"""The one error type of the HTTP layer: an OpenAI-style error body with a status code."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from radixrt.frontend.protocol import ErrorInfo, ErrorResponse
from radixrt.sampling_params import InvalidRequestError


class APIError(Exception):
    """An error answered with {"error": {message, type, param, code}} (protocol.ErrorResponse):
    as the HTTP response, or as the last event of a stream that already began."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    @classmethod
    def bad_request(cls, exc: InvalidRequestError) -> APIError:
        return cls(400, str(exc), param=exc.param)

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type,
                                             param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status,
                            headers=self.headers)
