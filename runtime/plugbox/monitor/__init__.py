"""Monitoring: Prometheus exposition of the metrics ``Runtime.metrics()`` and
``PluginHost.metrics()`` return (the ``plugbox[metrics]`` extra, ``prometheus_client``).

- :class:`PrometheusCollector`: a ``prometheus_client`` custom collector reading a host's or a
  runtime's metrics at each scrape;
- :func:`registry_for`, :func:`wsgi_app`, :func:`asgi_app`, :func:`serve`: a registry holding
  one, and ``/metrics`` apps and a server built on it;
- :class:`MultiprocessExporter`: for prometheus_client's multi-process mode (gunicorn), which
  does not aggregate custom collectors: mirrors the counters and gauges into
  prometheus_client's own metric objects, which it does aggregate.

- :class:`AnomalyMonitor`: behaviour-anomaly rules (denied-call bursts, fuel and memory
  spikes, new http hosts, kv near its quota) with actions (log, event, quarantine).

See docs/monitoring.md. The snapshot types themselves (``plugbox.Metrics``,
``plugbox.PluginMetrics``, ...) need no extra.
"""

from __future__ import annotations

from ._anomaly import Anomaly, AnomalyMonitor, AnomalyRules
from ._prometheus import (MultiprocessExporter, PrometheusCollector, asgi_app, registry_for,
                          serve, wsgi_app)

__all__ = ["Anomaly", "AnomalyMonitor", "AnomalyRules", "MultiprocessExporter", "PrometheusCollector", "asgi_app", "registry_for", "serve",
           "wsgi_app"]
