"""Observability without content: Prometheus metrics, structured logs, optional traces.

Every label is a region, a provider name, a route template, a status or an error type:
never a path with ids, a model prompt, a header value or anything a request carried.
"""
