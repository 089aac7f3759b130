"""What every `fedopsctl` command shares: global options, the service client, output and errors.

Exit codes: 0 ok, 1 service error, 2 bad input (usage errors, INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION), 3 refused (UNAUTHENTICATED, PERMISSION_DENIED). Text from the service
(error details, reasons, event messages, names) is printed as is, never read as rich markup.
"""

from __future__ import annotations

import json
import tomllib
from enum import StrEnum
from typing import Any

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from fedops_client import ControlClient, ControlError
from fedops_common import labels
from fedops_common.proto import common_pb2
from fedops_common.security import ChannelSecurity

console = Console()
S = common_pb2


class Table(RichTable):
    """A rich Table that shows str cells and its title as they are: they hold the service's text,
    which rich would otherwise read as markup ("[tool.flwr.app.config]" would vanish)."""

    def __init__(self, *headers: Any, title: str | Text | None = None, **options: Any) -> None:
        super().__init__(*headers, title=Text(title, style="table.title") if isinstance(title, str) else title,
                         **options)

    def add_row(self, *cells: Any, **options: Any) -> None:
        super().add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells), **options)


def say(*parts: str | tuple[str, str], stderr: bool = False) -> None:
    """Print one line of plain text (str parts, or (text, style) pairs) with no markup, emoji codes
    or wrapping: the service's text stays intact and greppable."""
    (Console(stderr=True) if stderr else console).print(Text.assemble(*parts), soft_wrap=True)


class Output(StrEnum):
    table = "table"
    json = "json"


class Ctx:
    """Global options shared by every command."""

    control: str = "127.0.0.1:50051"
    output: Output = Output.table
    security: ChannelSecurity = ChannelSecurity()
    _client: ControlClient | None = None

    @classmethod
    def client(cls) -> ControlClient:
        """The control service's client (one channel per command)."""
        if cls._client is None:
            cls._client = ControlClient(cls.control, cls.security)
        return cls._client


def fail(message: str, code: int = 2) -> None:
    """Print an error (verbatim: it often holds the service's text) to stderr and exit."""
    say(("error:", "red"), " ", message, stderr=True)
    raise typer.Exit(code)


def exit_code(err: ControlError) -> int:
    """2 for bad input, 3 when refused, 1 for any other service error."""
    return 2 if err.bad_input else 3 if err.refused else 1


def call(method: str, request: Any, timeout: float = 30, service: str = "control") -> Any:
    """Unary call by method name, with errors mapped to exit codes."""
    try:
        return Ctx.client().call(method, request, timeout, service)
    except ControlError as err:
        fail(str(err), exit_code(err))


def as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def emit(message: Any, render: Any) -> None:
    """JSON for --output json, else the given table renderer."""
    if Ctx.output == Output.json:
        print(json.dumps(as_json(message), indent=2, sort_keys=True))
    else:
        render(message)


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """key=value pairs; values are TOML literals (numbers, booleans, quoted strings) or bare strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint=option)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def parse_selector_option(text: str, option: str = "--select") -> dict[str, str]:
    """A label selector ``site=eu,gpu=true`` as a map. Only its shape is checked here: the service
    checks the label syntax, and its message (naming the field) is printed verbatim."""
    try:
        return labels.parse_selector(text, check=False)
    except labels.LabelError as err:
        raise typer.BadParameter(err.message, param_hint=option) from None


def parse_label_pairs(pairs: list[str] | None, option: str) -> dict[str, str]:
    """``key=value`` labels (repeatable option or arguments); the service checks their syntax."""
    try:
        return labels.parse_pairs(pairs or [], check=False)
    except labels.LabelError as err:
        raise typer.BadParameter(err.message, param_hint=option) from None
