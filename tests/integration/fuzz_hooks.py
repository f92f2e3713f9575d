"""schemathesis hooks for test_fuzz.py (loaded by `st run` through SCHEMATHESIS_HOOKS=fuzz_hooks): half of the
generated generation requests name the served model, so that they reach the engine rather than stop at a 404."""

from __future__ import annotations

import schemathesis

SERVED_MODEL = "SmolLM2-135M-Instruct"


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 2:
        return {**body, "model": SERVED_MODEL}
    return body
