"""Serving a trained model: an HTTP API and a page (FastAPI + uvicorn, dynamic batching), the
same app as a Ray Serve deployment, and a load benchmark. Entry points: tools/serve.py,
tools/benchmark_serve.py."""
