"""Strict OpenMetrics check of a Sluice /metrics body (read from stdin).

Parses with prometheus_client's OpenMetrics parser, which rejects what the
format forbids: a missing `# EOF`, counters without `_total`, histogram
buckets that are not cumulative or lack `+Inf`, a `+Inf` bucket that differs
from `_count`, duplicate series. Prints one line per family:
`<name> <type> <samples>`, then `ok`. Used by tests/metrics.rs; `.ci/run`
installs prometheus-client.
"""

import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    for family in text_string_to_metric_families(text):
        print(f"{family.name} {family.type} {len(family.samples)}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
