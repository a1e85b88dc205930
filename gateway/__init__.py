"""The gateway: configuration, the durable journal and bus, the pipeline stages, API and CLI.

``wardgate run`` composes them in one process on embedded defaults (SQLite stores, a
SQLite-backed bus, CPU inference in sandbox subprocesses).
"""
