"""Inference: the region's model providers, the router that picks among them and fails over
(G2: only this region's providers, fail closed), and usage accounting.

Used by both front doors: the gateway (`/v1`) and the workspace's chat. One copy of the
routing and failover rules, so the two cannot drift apart.
"""
