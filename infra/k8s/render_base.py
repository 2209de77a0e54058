"""Render the Helm chart into the kustomize base (k8s/base/medops.yaml).

    python infra/k8s/render_base.py [--check]

The base is the chart rendered with k8s/base/values.yaml (no Helm hooks, no secrets), so
kustomize users get the same objects as Helm users. --check exits 1 when the file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medops"
BASE = ROOT / "k8s" / "base"
HEADER = (
    "# Generated from charts/medops with k8s/base/values.yaml by `make k8s-base`; do not edit.\n"
)


def render() -> str:
    """The base manifest text: every rendered object but Helm hooks, in a stable order."""
    values = yaml.safe_load((BASE / "values.yaml").read_text(encoding="utf-8"))
    chart = helm_python.Chart.load(CHART)
    out = chart.render(values, name="medops", namespace="medops")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and "helm.sh/hook" not in doc.get("metadata", {}).get("annotations", {}):
                docs.append(doc)
    docs.sort(key=lambda d: (d["kind"], d["metadata"]["name"]))
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when k8s/base/medops.yaml is stale")
    args = ap.parse_args(argv)
    target = BASE / "medops.yaml"
    text = render()
    if args.check:
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            print(f"{target.relative_to(ROOT)} is stale: run make k8s-base", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
