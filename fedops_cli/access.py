"""`fedopsctl token|ca|whoami` and `fedopsctl task enrol-token`: who may do what, and TLS certificates."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedops_cli.context import Ctx, Output, Table, call, console, emit, fail, parse_label_pairs, say
from fedops_cli.tasks import task_app
from fedops_common.ca import CA_CERT, CertificateAuthority
from fedops_common.convert import enum_label
from fedops_common.proto import access_pb2

A = access_pb2
token_app = typer.Typer(help="Operator API tokens (roles viewer, operator, admin) and revocation.",
                        no_args_is_help=True)
ca_app = typer.Typer(help="A small CA: TLS certificates for the control service, agents and operators.",
                     no_args_is_help=True)


class RoleName(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


class KindName(StrEnum):
    all = "all"
    api = "api"
    enrolment = "enrolment"
    agent = "agent"
    run = "run"


def _render_issued(issued: access_pb2.IssuedToken) -> None:
    info = issued.info
    say(f"{enum_label(A.TokenKind, info.kind)} token {info.token_id} for {info.subject or info.name} "
        f"(role {enum_label(A.Role, info.role)}); keep it secret, it is shown once:")
    print(issued.token)


def whoami() -> None:
    """The identity and role of the token in use."""
    emit(call("WhoAmI", A.WhoAmIRequest(), service="access"),
         lambda r: say(f"{r.name or 'anonymous'} - role {enum_label(A.Role, r.role)}"
                       + (f", token {r.token_id}" if r.token_id else "")))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="who or what holds the token")],
    role: Annotated[RoleName, typer.Option(help="viewer, operator or admin")] = RoleName.viewer,
    ttl: Annotated[int, typer.Option(help="seconds until it expires; 0 = never")] = 0,
) -> None:
    """Create an API token (admin). The secret is printed once."""
    role_value = A.Role.Value(f"ROLE_{role.value.upper()}")
    emit(call("CreateApiToken", A.CreateApiTokenRequest(name=name, role=role_value, ttl_s=ttl), service="access"),
         _render_issued)


@token_app.command("list")
def token_list(
    kind: Annotated[KindName, typer.Option(help="only tokens of this kind")] = KindName.all,
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
) -> None:
    """Tokens and agent credentials, never their secrets (admin)."""
    kind_value = (A.TOKEN_KIND_UNSPECIFIED if kind == KindName.all
                  else A.TokenKind.Value(f"TOKEN_KIND_{kind.value.upper()}"))
    request = A.ListTokensRequest(kind=kind_value, include_revoked=include_revoked)
    response = call("ListTokens", request, service="access")

    def render(resp: access_pb2.ListTokensResponse) -> None:
        table = Table("token", "kind", "name", "role", "subject", "created", "expires", "used", "revoked")
        for info in resp.tokens:
            stamps = [ts.ToDatetime().strftime("%Y-%m-%d %H:%M") if ts.seconds else "" for ts in
                      (info.created_at, info.expires_at, info.used_at, info.revoked_at)]
            table.add_row(info.token_id, enum_label(A.TokenKind, info.kind), info.name, enum_label(A.Role, info.role),
                          info.subject, *stamps)
        console.print(table)

    emit(response, render)


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke an API token, an unused enrolment token or an agent credential (admin)."""
    emit(call("RevokeToken", A.RevokeTokenRequest(token_id=token_id), service="access"),
         lambda r: say(f"revoked {r.token_id} ({enum_label(A.TokenKind, r.kind)} {r.name})"))


@task_app.command("enrol-token")
def task_enrol_token(
    task_id: str,
    name: Annotated[str, typer.Option(help="the device it is meant for: the client's name once enrolled")] = "",
    ttl: Annotated[int, typer.Option(help="seconds until it expires; 0 = 24 hours")] = 0,
    label: Annotated[
        list[str] | None, typer.Option(help="label key=value the enrolled client gets (repeatable)")
    ] = None,
) -> None:
    """A one-time token that enrols one device in this task (give it to `fedops-agent --enrolment-token`)."""
    request = A.CreateEnrolmentTokenRequest(task_id=task_id, ttl_s=ttl, name=name,
                                            labels=parse_label_pairs(label, "--label"))
    emit(call("CreateEnrolmentToken", request, service="access"), _render_issued)


@ca_app.command("init")
def ca_init(
    directory: Annotated[Path, typer.Option("--dir", help="where ca.pem and ca.key go")] = Path("certs"),
    name: Annotated[str, typer.Option(help="the CA's common name")] = "FedOps Stack CA",
) -> None:
    """Create a CA (once). Keep ca.key offline; give ca.pem to every party."""
    try:
        CertificateAuthority.create(directory, name)
    except FileExistsError as err:
        fail(str(err))
    _print_paths({"ca": str(directory / CA_CERT), "key": str(directory / "ca.key")}, f"created CA {name!r}")


@ca_app.command("issue")
def ca_issue(
    name: Annotated[str, typer.Argument(help="common name: a server's name, an agent's device id, an operator")],
    directory: Annotated[Path, typer.Option("--dir", help="the CA's directory (certificates go here too)")] = Path(
        "certs"
    ),
    server_host: Annotated[
        list[str] | None,
        typer.Option(
            "--server-host", help="DNS name or IP the server is reached at (repeatable): a server certificate"
        ),
    ] = None,
    client: Annotated[bool, typer.Option(help="a client certificate (mutual TLS; agents: name = device id)")] = False,
    days: Annotated[int, typer.Option(help="validity in days")] = 825,
) -> None:
    """Issue a server and/or client certificate signed by the CA."""
    if not server_host and not client:
        raise typer.BadParameter("give --server-host (server) and/or --client", param_hint="--server-host/--client")
    if not 1 <= days <= 3650:
        raise typer.BadParameter("between 1 and 3650", param_hint="--days")
    if not name or "/" in name or name.startswith("."):
        raise typer.BadParameter("a plain name (no '/')", param_hint="NAME")
    if not (directory / "ca.key").is_file():
        fail(f"no CA in {directory}: run `fedopsctl ca init --dir {directory}` first")
    ca = CertificateAuthority.load(directory)
    # Server certificates can also act as clients: the control service's ServerApp presents it under mTLS.
    cert, key = ca.issue(name, directory, server_hosts=list(server_host or []), client=client or bool(server_host),
                         days=days)
    _print_paths({"cert": str(cert), "key": str(key), "ca": str(directory / CA_CERT)}, f"issued {name!r}")


def _print_paths(paths: dict[str, str], title: str) -> None:
    if Ctx.output == Output.json:
        print(json.dumps(paths, indent=2, sort_keys=True))
    else:
        say(title)
        for key, value in paths.items():
            say(f"  {key}: {value}")
