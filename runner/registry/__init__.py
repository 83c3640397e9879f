"""The tenant registry: models, loading with file:line errors, target selection.

    registry = load_registry("stacks/tenants.yaml")      # or sqlite:///x.db?table=tenants
    selection = select_targets(registry, all_tenants=True, envs=["staging"])
    for target in selection.targets:
        secrets = resolve_secrets(target, registry.base_dir)

No click here: the CLI turns RegistryError/SelectionError into exit code 2.
"""

from .database import write_registry_table
from .errors import RegistryError, SecretError, SelectionError
from .loader import format_errors, load_registry
from .models import (
    TENANT_ID_PATTERN,
    Environment,
    Registry,
    Rollout,
    SecretRef,
    Tenant,
    Wave,
    is_valid_id,
)
from .paths import LABEL_PATTERN, LABEL_RULE, PathPolicy, is_label, label_problem
from .schema import RESERVED_KEYS, ConfigKey, load_config_schema
from .selection import (
    Selection,
    Target,
    registry_summary,
    resolve_secrets,
    select_targets,
    target_for,
    tenants_table,
)

__all__ = [
    "ConfigKey",
    "Environment",
    "LABEL_PATTERN",
    "LABEL_RULE",
    "PathPolicy",
    "RESERVED_KEYS",
    "Registry",
    "RegistryError",
    "Rollout",
    "SecretError",
    "SecretRef",
    "Selection",
    "SelectionError",
    "TENANT_ID_PATTERN",
    "Target",
    "Tenant",
    "Wave",
    "format_errors",
    "is_label",
    "label_problem",
    "is_valid_id",
    "load_config_schema",
    "load_registry",
    "registry_summary",
    "resolve_secrets",
    "select_targets",
    "target_for",
    "tenants_table",
    "write_registry_table",
]
