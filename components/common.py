"""Platform-neutral helpers and argument types shared by components/local and
components/aws. Nothing here creates resources or knows about the runner."""

from __future__ import annotations

import hashlib
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
