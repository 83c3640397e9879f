"""Reports survive any text (#15.4), on the real engine."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

from tests.e2e.conftest import PROJECT_DIR, tenant


def test_an_error_with_markup_and_a_control_character_still_writes_every_report(sandbox):
    migrations = sandbox.root / "migrations-markup"
    shutil.copytree(PROJECT_DIR / "stacks" / "migrations", migrations)
    # sqlite answers `no such table: [/tmp]\x07`: rich markup and a control character in one error
    (migrations / "900_markup.sql").write_text('SELECT * FROM "[/tmp]\x07";\n')
    tenants = [tenant("shop-1"), tenant("shop-2", config={"migrations_dir": str(migrations)})]
    sandbox.write_registry(tenants)
    junit, report_json, step = (sandbox.root / name for name in ("junit.xml", "report.json", "step.md"))

    result = sandbox.run("up", "--all-tenants", "--yes", "--json", "--junit", str(junit),
                         "--report-json", str(report_json), env={"GITHUB_STEP_SUMMARY": str(step)})

    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = result.by_stack()["shop-2.staging"]
    assert failed["status"] == "failed" and "[/tmp]\x07" in failed["error_message"], failed
    assert result.by_stack()["shop-1.staging"]["status"] == "succeeded"
    assert json.loads(report_json.read_text())["counts"] == result.json["counts"]
    message = ET.parse(junit).getroot().find("testcase[@name='shop-2.staging']/failure").get("message")
    assert "[/tmp]" in message
    assert "shop-2.staging" in step.read_text()
    summary_row = next(line for line in result.stderr.splitlines() if "shop-2.staging" in line and "[/tmp]" in line)
    assert "failed" in summary_row
