"""The model list survives a Triton that cannot answer a refresh in time (seen at 200 streams on 2 cores): the
models already known stay listed, and only a front-end that knows none answers 503. Triton is made unreachable
through a TCP proxy we cut, in front of the real server."""

from __future__ import annotations

import asyncio
import time

import pytest

from frontend_api.engine.protocol import EngineUnavailable
from frontend_api.engine.triton import TritonEngine

from stack import MODEL, TcpProxy


def test_a_failed_refresh_keeps_the_known_models_and_a_new_engine_reports_unavailable(stack):
    proxy = TcpProxy("127.0.0.1", stack.triton_grpc_port)
    proxy.restore()
    address = f"127.0.0.1:{proxy.port}"

    async def scenario() -> None:
        engine = TritonEngine(address, rpc_timeout_s=2, models_ttl_s=0)  # every call refreshes
        try:
            known = [model.id for model in await engine.list_models()]
            assert MODEL in known
            proxy.cut()
            assert [model.id for model in await engine.list_models()] == known
            assert not await engine.ready()  # readiness asks Triton itself, not the kept list
            newcomer = TritonEngine(address, rpc_timeout_s=2, models_ttl_s=0)
            try:
                with pytest.raises(EngineUnavailable):
                    await newcomer.list_models()
            finally:
                await newcomer.close()
            proxy.restore()
            deadline = time.monotonic() + 30
            while not await engine.ready():  # the channel reconnects by itself
                assert time.monotonic() < deadline, "not ready again after Triton came back"
                await asyncio.sleep(0.2)
        finally:
            await engine.close()

    try:
        asyncio.run(scenario())
    finally:
        proxy.cut()
