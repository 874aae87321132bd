"""The local cloud's Pub/Sub v1 service: Publisher, Subscriber and IAMPolicy."""
