"""Write deploy/prometheus/rules.yml, the plain Prometheus rule file, from the PrometheusRule in
k8s/components/monitoring/prometheusrule.yaml (its spec.groups: the one source of the rules).

    python -m scripts.prometheus_rules            # write it
    python -m scripts.prometheus_rules --check    # exit 1 if the file differs
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
TARGET = ROOT / "deploy" / "prometheus" / "rules.yml"

HEADER = (
    "# Generated from k8s/components/monitoring/prometheusrule.yaml (its spec.groups) by\n"
    "# `python -m scripts.prometheus_rules`: edit that file, then run this again.\n"
)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def groups() -> dict[str, Any]:
    """The rule file's content: the PrometheusRule's spec, as Prometheus reads it."""
    rule = yaml.safe_load(SOURCE.read_text())
    assert rule["kind"] == "PrometheusRule", SOURCE
    return {"groups": rule["spec"]["groups"]}


def render() -> str:
    body = yaml.dump(groups(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python -m scripts.prometheus_rules")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
