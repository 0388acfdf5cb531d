"""The error every request check raises, naming the request field it is about."""

from __future__ import annotations


class RequestError(ValueError):
    """Invalid generation input; `field` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
