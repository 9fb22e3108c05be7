"""Who may do what: bearer tokens (stored hashed) and the role rules of cdpcore.api.

Order of checks: no or unknown token 401; another host's data, or an unknown host, 404
(its existence is not revealed); the wrong role on one's own host 403."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from cdpcore.api import Role

from .datastore import Datastore, hash_token


@dataclass(frozen=True)
class Principal:
    role: Role
    host: str | None  # None for admin tokens


def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, from `Authorization: Bearer <token>`."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    ds: Datastore = request.app.state.ds
    found = ds.catalog.token(hash_token(token.strip()))
    if found is None:
        raise HTTPException(401, "invalid token", {"WWW-Authenticate": "Bearer"})
    return Principal(found[0], found[1])


def require_host(ds: Datastore, who: Principal, host: str, roles: tuple[Role, ...], *,
                 live: bool = False) -> None:
    """`live`: the call stores something for the host (a key, rules, objects), which a
    removed host must not take: its successor under the name would inherit it."""
    if (who.role is not Role.admin and who.host != host) or not ds.catalog.host_exists(host):
        raise HTTPException(404, f"no host {host!r}")
    if who.role not in roles:
        raise HTTPException(403, f"a {who.role.value} token may not do this")
    if live and ds.catalog.host_retired(host):
        raise HTTPException(404, f"host {host!r} was removed: enrol it again with "
                                 "POST /hosts or `cdp-server host add`")


def require_admin(who: Principal) -> None:
    if who.role is not Role.admin:
        raise HTTPException(403, f"a {who.role.value} token may not do this: admin only")


READ = (Role.agent, Role.restore, Role.admin)
WRITE = (Role.agent, Role.admin)
ADMIN = (Role.admin,)
