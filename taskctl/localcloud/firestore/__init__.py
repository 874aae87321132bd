"""The local cloud's Firestore v1 service (Native mode, one process, SQLite)."""
