"""Observability of one node: cheap counters on the request path, a Prometheus collector
that reads them (and every module's own counters) at scrape time, the HTTP server of the
metrics and the dashboard, and the dashboard's JSON view of the cluster.

The request path only ever increments plain integers and fixed-bucket histograms (a list of
ints and one binary search): no locks and no prometheus_client objects per request. All the
conversion to Prometheus families happens in :mod:`.collector`, once per scrape.
"""
