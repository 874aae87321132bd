"""Cloud Functions v2, its long-running operations and Eventarc triggers.

Deployed functions run on this machine under functions-framework, one child
process per function, fed by the push subscription their trigger creates.
"""
