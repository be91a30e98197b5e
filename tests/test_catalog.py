"""The README's metric tables say what the exporter publishes: every family declared in
outputs/catalog.py is in them with its type, and they name no family that is not."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.outputs import catalog

README = Path(__file__).resolve().parent.parent / "README.md"


def table(title_row: str) -> list[list[str]]:
    lines = README.read_text().splitlines()
    start = lines.index(title_row)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def expand(token: str) -> list[str]:
    """`a_{x,y}_b{labels}` -> [a_x_b, a_y_b]: braces after `_` are alternatives,
    braces at the end are labels."""
    token = re.sub(r"(?<=[a-z0-9])\{[^}]*\}$", "", token)
    match = re.search(r"_\{([^}]*)\}", token)
    if not match:
        return [token]
    head, tail = token[: match.start() + 1], token[match.end() :]
    return [name for choice in match.group(1).split(",") for name in expand(head + choice + tail)]


def test_the_readme_metric_table_matches_the_catalog() -> None:
    documented: dict[str, str] = {}
    for family, kind, _ in table("| family | type | meaning |"):
        for token in re.findall(r"`([^`]+)`", family):
            if "*" in token or not token.startswith("abtest_"):
                continue  # abtest_comparison_* (next table), abtest_exporter_*, process_*
            for name in expand(token):
                documented[name] = kind.split()[0] if kind else ""
    declared = {
        f.name: f.kind
        for f in catalog.FAMILIES
        if f.kind != "unknown" and f not in catalog.COMPARISONS
    }
    assert documented == declared


def test_the_readme_comparison_table_matches_the_catalog() -> None:
    documented = {
        token
        for gauge, _ in table("| gauge | what it tells you |")
        for token in re.findall(r"`([^`]+)`", gauge)
    }
    assert documented == {field for field, _ in catalog.COMPARISON_GAUGES}
    assert all(f.kind == "gauge" and f.otel for f in catalog.COMPARISONS)


def test_the_openapi_document_describes_metrics_from_the_catalog() -> None:
    """The OpenAPI description of /metrics is built from the same declaration."""
    from exporter.serve.openapi import document

    description = document()["paths"]["/metrics"]["get"]["description"]
    for family in catalog.FAMILIES:
        assert f"- `{family.name}` ({family.kind}): {family.help}" in description
