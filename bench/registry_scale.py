"""How long does loading a 10,000-tenant registry take?

    python -m bench.registry_scale [--tenants N] [--repeat R]

Generates a registry in a temporary directory, loads it with
``load_registry`` (best of R), and prints the figures. Also times the same
tenants from a SQLite table, and, as the baseline in the same run, ruamel.yaml's
own safe loader on the same file (the registry loader uses ruamel.yaml's C
parser with a lighter constructor that keeps line numbers). Asserts nothing:
the target is well under 2 s for 10,000 tenants.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML

from runner.registry import load_registry, select_targets, write_registry_table

TIERS = ("premium", "standard", "standard", "canary")


def tenant(i: int) -> dict:
    tenant_id = f"tenant-{i:05d}"
    return {
        "id": tenant_id,
        "name": f"Tenant {i}",
        "environments": ["staging", "production"] if i % 3 else ["production"],
        "tags": {"tier": TIERS[i % len(TIERS)], "region": "eu" if i % 2 else "us"},
        "config": {"domain": f"{tenant_id}.example.com"},
        "secrets": {"db_password": {"env": f"TENANT_{i:05d}_DB_PASSWORD"}},
        "enabled": i % 50 != 0,
    }


def registry_text(count: int) -> str:
    lines = [
        'defaults:\n  platform: local\n  app_version: "1.0.0"\n',
        "environments:\n  - name: testing\n  - name: staging\n  - name: production\n    require_tenant: true\n",
        "tenants:\n",
    ]
    for i in range(count):
        t = tenant(i)
        lines.append(
            f"  - id: {t['id']}\n"
            f"    name: {t['name']}\n"
            f"    environments: [{', '.join(t['environments'])}]\n"
            f"    tags: {{tier: {t['tags']['tier']}, region: {t['tags']['region']}}}\n"
            f"    config: {{domain: {t['config']['domain']}}}\n"
            f"    secrets: {{db_password: {{env: {t['secrets']['db_password']['env']}}}}}\n"
            f"    enabled: {'true' if t['enabled'] else 'false'}\n"
        )
    lines.append(
        "rollout:\n  waves:\n    - {name: canary, tags: {tier: canary}}\n"
        '    - {name: early, max: "25%"}\n    - {name: rest}\n  failure_tolerance: "1%"\n'
    )
    return "".join(lines)


def best_of(repeat: int, action: Callable[[], object]) -> float:
    """Best wall-clock time of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def best_cpu_of(repeat: int, action: Callable[[], object]) -> float:
    """Best CPU time of ``repeat`` runs: less disturbed by a busy machine."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        action()
        times.append(time.process_time() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="registry-scale-") as tmp:
        path = Path(tmp) / "tenants.yaml"
        path.write_text(registry_text(args.tenants), encoding="utf-8")
        size_kib = path.stat().st_size / 1024

        registry = load_registry(path)
        assert len(registry.tenants) == args.tenants
        yaml_s = best_of(args.repeat, lambda: load_registry(path))
        yaml_cpu = best_cpu_of(args.repeat, lambda: load_registry(path))
        select_s = best_of(args.repeat, lambda: select_targets(registry, all_tenants=True))
        safe_s = best_of(1, lambda: YAML(typ="safe").load(path.read_text(encoding="utf-8")))

        db = Path(tmp) / "registry.db"
        write_registry_table(f"sqlite:///{db}", [tenant(i) for i in range(args.tenants)])
        url = f"sqlite:///{db}?table=tenants"
        db_s = best_of(args.repeat, lambda: load_registry(url))

    print(f"registry scale: {args.tenants} tenants, YAML {size_kib:.0f} KiB, best of {args.repeat}")
    print(f"  load_registry(YAML)            {yaml_s:7.3f} s   (target: well under 2 s)")
    print(f"  load_registry(YAML), CPU time  {yaml_cpu:7.3f} s")
    print(f"  load_registry(SQLite)          {db_s:7.3f} s")
    print(f"  select_targets(--all-tenants)  {select_s:7.3f} s")
    print(f"  baseline: ruamel safe load     {safe_s:7.3f} s   (ratio {yaml_s / safe_s:.2f})")


if __name__ == "__main__":
    main()
