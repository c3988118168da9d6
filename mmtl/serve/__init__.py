"""HTTP serving of a trained model: FastAPI + uvicorn, dynamic batching, input and connection limits.

``mmtl serve`` runs :func:`serve`; tests and tools build a server with :func:`make_server`.
"""
from mmtl.serve.app import ServerLimits, Service, create_app
from mmtl.serve.batching import DynamicBatcher
from mmtl.serve.server import MMTLServer, ServeSettings, make_server, serve

__all__ = ["DynamicBatcher", "MMTLServer", "ServeSettings", "ServerLimits", "Service", "create_app", "make_server",
           "serve"]
