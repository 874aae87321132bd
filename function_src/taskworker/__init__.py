"""The worker's machinery: decoding, outcomes, logging, dead-letters, idempotency.

Task handlers live in the ``handlers`` package next to this one.
"""
