"""The only package that builds Google Cloud clients and translates their errors."""
