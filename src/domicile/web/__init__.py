"""What every front door (the gateway, the workspace) shares about HTTP: plain ASGI helpers,
the one strict JSON parse of a request body, and the streaming multipart parser that lets an
upload be sealed as it arrives. No framework, no state."""
