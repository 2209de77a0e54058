"""The plumbing every medops service shares: API keys, errors, JSON logs, middleware, health.

The gateway and the monitor both import it (services never import each other), so a key,
an error body, a log line and a health probe mean the same thing in each. Unlike the rest of
the library this package knows about ASGI, FastAPI and gRPC status codes.
"""
