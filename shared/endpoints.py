"""Where a registered ``backend_url`` points: the one place that turns it into the ``host:port``
Kinfer contacts, allows, and keys its breakers, health and replicas by.

``triton`` (bare, or with Triton's HTTP or gRPC port, 8000 or 8001, any scheme) names this
deployment's own Triton, TRITON_URL: in a cluster the Triton Service, in the local stack the local
Triton. It is the name the original platform's compose file gives its Triton and the natural
in-cluster name of ours, so a registration that names it works in every deployment. Kinfer speaks
gRPC to Triton, so either port means the same server. Any other address is taken as written.
"""

from __future__ import annotations

OWN_TRITON_HOST = "triton"
OWN_TRITON_PORTS = ("", "8000", "8001")


def backend_id(url: str) -> str:
    """``host:port``, lower case, no scheme, no trailing slash (``grpc://Triton-1:8001/`` -> ``triton-1:8001``)."""
    url = url.strip().lower()
    for scheme in ("grpc://", "http://", "https://"):
        url = url.removeprefix(scheme)
    return url.rstrip("/")


def names_own_triton(url: str) -> bool:
    host, _, port = backend_id(url).partition(":")
    return host == OWN_TRITON_HOST and port in OWN_TRITON_PORTS


def resolve(url: str, own_triton: str) -> str:
    """The backend a registered URL names: ``own_triton`` (TRITON_URL) for ``triton``, else the URL itself."""
    return backend_id(own_triton) if names_own_triton(url) else backend_id(url)
