"""Which role each RPC needs. Unknown methods are refused: new RPCs must be added here."""

from __future__ import annotations

from fedops_common.proto import access_pb2

A = access_pb2
OPEN = -1        # no token needed (health, reflection)
ENROLMENT = -2   # an agent credential, or enrolment tokens inside the request (Register)
_CONTROL = "/fedops.v1.ControlService/"
_ACCESS = "/fedops.v1.AccessService/"
_AGENT = "/fedops.v1.AgentService/"
_OBSERVER = "/fedops.v1.ObserverService/"

METHOD_ROLES: dict[str, int] = {
    **{_CONTROL + m: A.ROLE_VIEWER for m in (
        "GetTask", "ListTasks", "ListClients", "GetClient", "CountClients", "ListDataStatus", "GetRun", "ListRuns",
        "WatchRun", "DiagnoseRun", "ListModels", "GetModel", "DownloadModel")},
    **{_CONTROL + m: A.ROLE_OPERATOR for m in (
        "CreateTask", "UpdateTask", "DeleteTask", "SetTaskMembership", "SetClientLabels", "StartRun", "StopRun")},
    _ACCESS + "WhoAmI": A.ROLE_UNSPECIFIED,   # any valid token
    _ACCESS + "CreateEnrolmentToken": A.ROLE_OPERATOR,
    **{_ACCESS + m: A.ROLE_ADMIN for m in ("CreateApiToken", "ListTokens", "RevokeToken")},
    _AGENT + "Register": ENROLMENT,
    _AGENT + "Session": A.ROLE_AGENT,
    _OBSERVER + "ReportClientEvent": A.ROLE_AGENT,
    **{_OBSERVER + m: A.ROLE_RUN for m in ("ReportServerEvent", "UploadModel", "FetchModel")},
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Calls that change state: each is written to the audit log with who made it and its outcome.
AUDITED = frozenset({
    *(_CONTROL + m for m in ("CreateTask", "UpdateTask", "DeleteTask", "SetTaskMembership", "SetClientLabels",
                             "StartRun", "StopRun")),
    *(_ACCESS + m for m in ("CreateApiToken", "CreateEnrolmentToken", "RevokeToken")),
    _AGENT + "Register",
})


def required_role(method: str) -> int | None:
    """The role ``method`` needs, OPEN/ENROLMENT, or None for an unknown method (refused)."""
    if method.startswith(OPEN_PREFIXES):
        return OPEN
    return METHOD_ROLES.get(method)


def allows(role: int, needed: int) -> bool:
    """Operator roles are ordered (admin > operator > viewer); agent and run roles stand alone."""
    if needed == A.ROLE_UNSPECIFIED:
        return True
    if needed in (A.ROLE_VIEWER, A.ROLE_OPERATOR, A.ROLE_ADMIN):
        return role in (A.ROLE_VIEWER, A.ROLE_OPERATOR, A.ROLE_ADMIN) and role >= needed
    return role == needed


def role_name(role: int) -> str:
    """'viewer', 'operator', ... for messages."""
    return A.Role.Name(A.Role.ValueType(role)).removeprefix("ROLE_").lower() if role in A.Role.values() else str(role)
