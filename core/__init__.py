"""Shared foundations: settings, errors, logging, NATS connection and metrics.

Every other package depends on ``core``; ``core`` depends on none of them.
"""
