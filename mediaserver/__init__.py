"""mediaserver: a real-time video conferencing server in Python.

Gateway (FastAPI), control plane (Ray actors in ``actors/``), store
(SQLAlchemy) and media plane (``mediaserver.media`` and the Cython fast path).
"""

__version__ = "0.1.0"
