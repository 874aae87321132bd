"""taskctl: operate Pub/Sub-driven background tasks on Cloud Functions (2nd gen)."""

__version__ = "0.1.0"
