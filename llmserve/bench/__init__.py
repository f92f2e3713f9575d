"""`llmserve bench`: a load generator for the OpenAI endpoint (SSE) and for Triton gRPC (docs/PERFORMANCE.md)."""
