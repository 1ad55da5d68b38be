"""Batch jobs: submit, read, list and cancel (``jobs``), the chunk worker (``worker``), job
creation from events (``intake``), chunk and result objects in S3 (``results``), job and
chunk state in PostgreSQL (``store``) and the event types (``events``).

May import ``shared.inference``, ``shared.backends``, ``shared.registry``, ``shared.clients``
and the root modules; never ``shared.web``.
"""
