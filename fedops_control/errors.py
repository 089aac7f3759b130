"""The one error type for bad input; servicers turn it into INVALID_ARGUMENT."""


class InvalidArgument(ValueError):
    """Bad input, naming the offending field (e.g. ``strategy.rounds``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(LookupError):
    """A referenced object does not exist."""


class FailedPrecondition(RuntimeError):
    """The request is valid but the current state does not allow it."""


class PermissionDenied(PermissionError):
    """The caller is known but may not do this (e.g. act as another agent)."""


class Unauthenticated(PermissionError):
    """The caller presented no valid credential."""


class Overloaded(RuntimeError):
    """The caller's deadline passed while the request waited its turn: it is dropped, not done."""
