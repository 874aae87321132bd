"""The embedded local cloud: Pub/Sub, Cloud Functions, Eventarc, Logging and Storage
served on loopback, for development and tests without a Google account."""
