"""The regional OpenAI-compatible gateway (G2 in-region processing, G3 wrong door, G4 zero
retention, G6 TLS to providers).

`create_gateway_app(settings, region, authenticator=..., usage_sink=...)` builds the ASGI app
of one region; see `app.py` for the request path and `routing.py` for provider selection.
"""

from .app import GatewayApp, create_gateway_app
from .ratelimit import InMemoryRateLimiter, RateLimiter

__all__ = ["GatewayApp", "InMemoryRateLimiter", "RateLimiter", "create_gateway_app"]
