"""Adapters to the outside services, each translating its driver's errors into
``shared.errors`` once: PostgreSQL (``db``, with every table in ``schema`` and the Alembic
``migrations``), Redis (``cache``), S3 (``storage``) and the CloudEvents sink (``sink``).

May import only the root modules settings, errors and logs; everything else builds on this.
"""
