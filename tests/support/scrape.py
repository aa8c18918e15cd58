"""Read Prometheus text exposition the way a scraper does: over HTTP, parsed by prometheus_client."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One scrape of a ``/metrics`` endpoint."""

    text: str

    @classmethod
    def of(cls, base_url: str) -> Scrape:
        resp = httpx.get(f"{base_url}/metrics", timeout=10)
        assert resp.status_code == 200, (resp.status_code, resp.text[:500])
        assert resp.headers["content-type"].startswith("text/plain"), resp.headers["content-type"]
        return cls(resp.text)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            s.value
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        return any(
            s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
        )

    def label_values(self, label: str) -> set[str]:
        return {
            s.labels[label]
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
            if label in s.labels
        }
