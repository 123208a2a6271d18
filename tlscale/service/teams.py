"""Teams and their API tokens. A token is shown once, when it is made; the store keeps its SHA-256 (tokens
are 32 random bytes, so a fast hash is enough: there is nothing to guess)."""
from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tlscale.errors import ConfigError
from tlscale.service.store import Store, Team, Token, new_id, now

TOKEN_PREFIX = "tls_"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_team(store: Store, name: str, **quotas) -> tuple[Team, str]:
    """(team, its first token)."""
    if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"team name: expected 1-100 letters, digits, '-' or '_', found {name!r}")
    with store.session() as session:
        team = Team(id=new_id("team"), name=name, created_at=now(), max_running=quotas.get("max_running", 2),
                    max_queued=quotas.get("max_queued", 100),
                    max_compute_hours=quotas.get("max_compute_hours", 1000.0))
        session.add(team)
        try:
            session.commit()
        except IntegrityError:
            raise ConfigError(f"team '{name}' exists already") from None
    return team, create_token(store, name)


def find_team(store: Store, name: str) -> Team:
    with store.session() as session:
        team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise ConfigError(f"no team '{name}'")
    return team


def create_token(store: Store, team_name: str, expires_in_days: float | None = None) -> str:
    team = find_team(store, team_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.session() as session:
        session.add(Token(id=new_id("tok"), team_id=team.id, digest=digest(token), prefix=token[:12],
                          created_at=now(),
                          expires_at=None if expires_in_days is None else now() + expires_in_days * 86400))
        session.commit()
    return token


def revoke_token(store: Store, prefix_or_token: str) -> int:
    """Revoke the tokens starting with this prefix (as `list-teams` shows them) or equal to this token."""
    with store.session() as session:
        tokens = session.scalars(select(Token).where(Token.revoked_at.is_(None))).all()
        hits = [t for t in tokens if t.digest == digest(prefix_or_token)
                or (len(prefix_or_token) >= 8 and t.prefix.startswith(prefix_or_token))]
        for token in hits:
            token.revoked_at = now()
        session.commit()
    if not hits:
        raise ConfigError(f"no active token matches '{prefix_or_token}'")
    return len(hits)


def set_quotas(store: Store, team_name: str, **quotas) -> Team:
    team = find_team(store, team_name)
    with store.session() as session:
        team = session.get(Team, team.id)
        for key, value in quotas.items():
            if value is not None:
                if value < 0:
                    raise ConfigError(f"--{key.replace('_', '-')}: expected >= 0, found {value}")
                setattr(team, key, value)
        session.commit()
    return team


def list_teams(store: Store) -> list[dict]:
    with store.session() as session:
        teams = session.scalars(select(Team).order_by(Team.name)).all()
        tokens = session.scalars(select(Token)).all()
    return [{"name": t.name, "id": t.id, "max_running": t.max_running, "max_queued": t.max_queued,
             "max_compute_hours": t.max_compute_hours,
             "tokens": [{"prefix": k.prefix, "revoked": k.revoked_at is not None, "expires_at": k.expires_at}
                        for k in tokens if k.team_id == t.id]} for t in teams]


def team_of_token(store: Store, token: str) -> Team | None:
    """The team a valid (known, unrevoked, unexpired) token belongs to, else None."""
    with store.session() as session:
        row = session.scalar(select(Token).where(Token.digest == digest(token)))
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at < now()):
            return None
        return session.get(Team, row.team_id)
