"""The worker's machinery: message decoding, outcomes, logging and dead-lettering.

Task handlers live in the ``handlers`` package next to this one.
"""
