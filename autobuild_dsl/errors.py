"""The one root of every error a user can cause.

Each package's error is a subclass of `AbcError` with a short `code` (what kind of input was
wrong) and the process `exit_code` the CLI uses: 1 for bad input, 2 for `.abs` diagnostics.
Anything else that escapes the library is a bug (the CLI exits 3 with a report).

Library messages say what is wrong in the library's own words. When an option fixes it, the
error carries a `Remedy` naming the workflow parameter (`force`, `resume`, ...); the CLI
turns that into the flag a user types, and a Python caller reads the parameter name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

EXIT_USER_ERROR = 1
EXIT_COMPILE_ERROR = 2
EXIT_INTERNAL_ERROR = 3


@dataclass(frozen=True)
class Remedy:
    """A parameter that resolves an error: `parameter` is the workflow argument's name
    (the CLI option of the same name with dashes), `action` what setting it does."""

    parameter: str
    action: str
    value: str | None = None

    def python_text(self) -> str:
        value = self.value if self.value is not None else "True"
        return f"{self.parameter}={value} {self.action}".rstrip()


# The remedies most errors offer, spelled once.
OVERWRITE = Remedy("force", "to overwrite it")
START_OVER = Remedy("force", "to start over")
CONTINUE = Remedy("resume", "to continue it")


class AbcError(Exception):
    """Root of the errors a user can cause; subclasses set `code` (and `exit_code`)."""

    code: ClassVar[str] = "input"
    exit_code: ClassVar[int] = EXIT_USER_ERROR

    def __init__(self, *args: object, remedies: tuple[Remedy, ...] = ()) -> None:
        super().__init__(*args)
        self.remedies = remedies


__all__ = [
    "CONTINUE",
    "EXIT_COMPILE_ERROR",
    "EXIT_INTERNAL_ERROR",
    "EXIT_USER_ERROR",
    "OVERWRITE",
    "START_OVER",
    "AbcError",
    "Remedy",
]
