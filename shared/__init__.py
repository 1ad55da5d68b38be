"""Kinfer's library: everything the functions in ``functions/`` import.

Packages, from the top down (an import may only point down this list; the suite checks
it with import-linter, see ``docs/architecture.md``):

- ``cli``, ``localstack``: the ``kinfer`` command and the local stack (composition roots);
- ``web``: HTTP and CloudEvents plumbing, hosting;
- ``services``: the typed container of per-process clients and collaborators;
- ``batch``: batch jobs, worker, intake;
- ``inference``: the real-time data plane and its protocols;
- ``access``, ``backends``, ``registry``: API keys and limits, Triton backends, the model registry;
- ``clients``: PostgreSQL, Redis, S3 and the event sink;
- ``settings``, ``errors``, ``logs``, ``telemetry``, ``validation``: the base every layer uses.
"""
