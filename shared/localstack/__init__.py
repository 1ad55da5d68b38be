"""Local stand-ins for the production services (S3 server, event relay, Triton) used by `kinfer up` and tests."""
