"""The edge's use cases: what a request does, between the route that decodes it and the adapters."""
