"""The one exception type for bad user input, turned into JSON by the web layer."""

from __future__ import annotations


class ApiError(Exception):
    """A request that cannot be served: an HTTP status and the API's {"error", "detail"} pair.

    `error` is a short title ("Invalid tarball"), `detail` a sentence saying
    which value was wrong and what to do about it.
    """

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    def to_json(self) -> dict:
        return {"error": self.error, "detail": self.detail}


def not_found(build_id: str) -> ApiError:
    return ApiError(404, "Build not found", f"Build with ID '{build_id}' does not exist")
