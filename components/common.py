"""Platform-neutral helpers and argument types shared by components/local and
components/aws. Nothing here creates resources or knows about the runner."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

MANAGED_BY = "runner"

# index.html of the frontend as a string.Template (the program passes
# stacks/app/frontend/index.html).
DEFAULT_TEMPLATE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>$tenant_name</title></head>
<body>
<h1>$tenant_name</h1>
<p>Environment: $environment &middot; Domain: $domain</p>
<p>Release: $release &middot; App version: $app_version</p>
<p>Backend: $backend_url (schema $schema_version)</p>
</body>
</html>
"""


@dataclass(frozen=True)
class Migration:
    """One SQL migration file. ``version`` is the file name without ``.sql``."""

    file: str
    sql: str

    @property
    def version(self) -> str:
        return self.file[:-4] if self.file.endswith(".sql") else self.file

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "file": self.file, "checksum": self.checksum, "sql": self.sql}


def load_migrations(folder: Path) -> list[Migration]:
    """The ``*.sql`` files of ``folder`` in name order (missing folder: none)."""
    if not folder.is_dir():
        return []
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.sql"))]


def migrations_hash(migrations: list[Migration]) -> str:
    digest = hashlib.sha256()
    for mig in migrations:
        digest.update(f"{mig.file}\0{mig.checksum}\0".encode())
    return digest.hexdigest()


def load_files(folder: Path) -> dict[str, str]:
    """Every text file under ``folder`` as {relative posix path: text}."""
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def account_id_for(tenant_id: str) -> str:
    """A stable 12-digit account id derived from the tenant id (local platform)."""
    number = int(hashlib.sha256(tenant_id.encode("utf-8")).hexdigest(), 16) % 10**12
    return f"{number:012d}"


def standard_tags(tenant_id: str, environment: str, release: str) -> dict[str, str]:
    return {"tenant": tenant_id, "environment": environment, "release": release, "managed-by": MANAGED_BY}


def resource_tags(tenant_id: str, environment: str) -> dict[str, str]:
    """The tags of long-lived resources: no ``release`` (a release would
    re-tag every resource, the account included, on every deploy)."""
    return {"tenant": tenant_id, "environment": environment, "managed-by": MANAGED_BY}


#: AWS Organizations: an account's email is 6-64 characters, its name 1-50.
EMAIL_MAX = 64
ACCOUNT_NAME_MAX = 50
#: The longest account_email_domain that still leaves room for a unique local part.
EMAIL_DOMAIN_MAX = 40
_DOMAIN_RE = re.compile(rf"^(?=.{{4,{EMAIL_DOMAIN_MAX}}}$)([a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?\.)+[a-z]{{2,63}}$")


def email_domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot be an account_email_domain, or None."""
    if not domain:
        return "account_email_domain is required on the aws platform (root mail of every member account goes there)"
    if not _DOMAIN_RE.match(domain):
        return (
            f"account_email_domain {domain!r} must be a lower-case domain name of at most {EMAIL_DOMAIN_MAX} characters"
        )
    return None


def _fit(text: str, limit: int, key: str) -> str:
    """``text`` if it fits in ``limit``, else a prefix plus an 8-hex digest of
    ``key``: still unique per tenant and environment."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-.')}-{digest}"


def account_email(tenant_id: str, environment: str, domain: str) -> str:
    """The member account's root email, unique per tenant AND environment:
    ``aws+<tenant>-<environment>@<domain>``, shortened with a digest to AWS's
    64 characters."""
    problem = email_domain_problem(domain)
    if problem:
        raise ValueError(problem)
    local = _fit(f"aws+{tenant_id}-{environment}", EMAIL_MAX - 1 - len(domain), f"{tenant_id}.{environment}")
    return f"{local}@{domain}"


def account_name(tenant_id: str, environment: str) -> str:
    """The member account's name, ``<tenant>.<environment>`` within 50 characters."""
    return _fit(f"{tenant_id}.{environment}", ACCOUNT_NAME_MAX, f"{tenant_id}.{environment}")
