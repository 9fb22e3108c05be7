"""Prometheus metrics of one server process (a registry per app, so tests can build
several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.bytes_in = Counter("cdp_bytes_in", "Request body bytes received", registry=r)
        self.bytes_out = Counter("cdp_bytes_out", "Object bytes sent (fetch)", registry=r)
        self.objects_stored = Counter("cdp_objects_stored", "Objects newly stored",
                                      ["kind"], registry=r)
        self.objects_duplicate = Counter("cdp_objects_duplicate",
                                         "Uploaded objects already present", ["kind"],
                                         registry=r)
        self.points = Counter("cdp_points_committed", "Recovery points committed",
                              registry=r)
        self.errors = Counter("cdp_errors", "Answers with status >= 400", ["status"],
                              registry=r)
        self.duration = Histogram("cdp_request_duration_seconds", "Request durations",
                                  ["method", "route"], registry=r)
