"""`llmserve prepare | serve | keys | config`. Flags override the environment (`LLMSERVE_*`), which overrides the
config file (`--config`, TOML), which overrides the defaults."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from build_engines.trtllm import add_build_arguments
from engine_contract import LLM_CORES
from frontend_api.settings import ConfigFileError, load_settings
from llmserve.bench.run import add_arguments as add_bench_arguments
from llmserve.settings import LauncherSettings

# flag -> Settings field, for the flags both subcommands share
MODEL_FLAGS = {
    "model": "models",
    "device": "device",
    "dtype": "dtype",
    "instance_count": "instance_count",
    "max_num_seqs": "max_num_seqs",
    "kv_cache_blocks": "kv_cache_blocks",
    "home": "home",
    "engine_core": "engine_core",
    "weight_format": "weight_format",
    "prefix_caching": "prefix_caching",
    "engine_process": "engine_process",
}
SERVE_FLAGS = {
    "host": "host",
    "port": "port",
    "workers": "workers",
    "model_repository": "model_repository",
    "auth": "auth",
    "triton_http_port": "triton_http_port",
    "triton_grpc_port": "triton_grpc_port",
    "triton_metrics_port": "triton_metrics_port",
    "allow_unauthenticated_public_bind": "allow_unauthenticated_public_bind",
    "log_level": "log_level",
}


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        metavar="SPEC",
        help="builtin:smollm2 (default), a local HF checkpoint DIR, or ID=DIR; repeat to serve several",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where the llm engine runs (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    parser.add_argument("--instance-count", type=int, help="engine instances per model (default 1)")
    parser.add_argument("--max-num-seqs", type=int, help="requests batched together per instance (default 32)")
    parser.add_argument("--kv-cache-blocks", type=int, help="paged KV cache blocks per instance (0 = automatic)")
    parser.add_argument(
        "--engine-core",
        choices=LLM_CORES,
        help="openvino: OpenVINO GenAI continuous batching (default on cpu) or fast: ours, with CUDA-graph "
        "decode (default on cuda); docs/PERFORMANCE.md",
    )
    parser.add_argument(
        "--prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse cached prompt prefixes (faster session turns; seeds then depend on the cache); default: on with "
        "the fast core only",
    )
    parser.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the engine core in a child process of Triton's model (responses then do not slow its loop); "
        "default: on with the fast core only",
    )
    parser.add_argument(
        "--weight-format",
        choices=["int8", "int4", "fp16"],
        help="weights of the openvino core (default int8; int4 is faster and answers less well)",
    )
    parser.add_argument(
        "--home",
        help="cache directory for converted models and the rendered repository "
        "(default ~/.cache/llmserve, or LLMSERVE_HOME)",
    )


def _add_api_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="front-end address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="front-end port (default 8000, or LLMSERVE_PORT)")
    parser.add_argument(
        "--workers",
        type=int,
        help="front-end processes sharing the port (default 0: half the CPUs available, 1 to 8, or 1 with per-key "
        "limits and no Redis; docs/CONFIGURATION.md)",
    )
    parser.add_argument("--auth", action="store_true", default=None, help="require API keys on every /v1 route")
    parser.add_argument(
        "--allow-unauthenticated-public-bind",
        action="store_true",
        default=None,
        help="allow a non-loopback --host although authentication is off",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _add_triton_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", help="serve this rendered repository as is (skips prepare)")
    parser.add_argument("--triton-http-port", type=int, help="Triton HTTP port (default 8100)")
    parser.add_argument("--triton-grpc-port", type=int, help="Triton gRPC port (default 8101)")
    parser.add_argument("--triton-metrics-port", type=int, help="Triton metrics port (default 8102)")


def _add_keys_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (in the configured database)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key; it is printed once and stored only as a hash")
    create.add_argument("--name", required=True, help="a unique name (shown in logs and metrics instead of the key)")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the server's rate_limit_rpm)")
    create.add_argument("--tpm", type=int, help="prompt + completion tokens per minute (default: rate_limit_tpm)")
    create.add_argument("--max-streams", type=int, help="concurrent generations (default: max_streams_per_key)")
    create.add_argument(
        "--key-env",
        metavar="VAR",
        help="store the key held in this environment variable instead "
        "of a random one (deployments: the Helm chart's admin key); same name and key again is a no-op",
    )
    actions.add_parser("list", help="list keys (names, prefixes, limits, status; never the keys)")
    revoke = actions.add_parser("revoke", help="revoke a key: it stops working at once, on every replica")
    revoke.add_argument("--name", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="OpenAI-compatible LLM serving on Triton.")
    parser.add_argument("--config", metavar="FILE.toml", help="configuration file (or LLMSERVE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="convert/verify checkpoints and render the Triton model repository")
    _add_model_flags(prepare)
    prepare.add_argument("--output", help="where to write model_repository/ and manifest.json (default HOME/build)")

    serve = sub.add_parser("serve", help="prepare, start Triton and serve the OpenAI API")
    _add_model_flags(serve)
    _add_api_flags(serve)
    _add_triton_flags(serve)

    api = sub.add_parser("api", help="the OpenAI API alone, against a Triton elsewhere (containers, Kubernetes)")
    _add_api_flags(api)
    api.add_argument(
        "--triton-grpc-url",
        metavar="HOST:PORT",
        help="Triton's gRPC address (default 127.0.0.1:8101, or LLMSERVE_TRITON_GRPC_URL)",
    )
    triton = sub.add_parser("triton", help="prepare, then run Triton alone for front-ends elsewhere (containers)")
    _add_model_flags(triton)
    _add_triton_flags(triton)
    triton.add_argument("--address", help="address Triton listens on (default 127.0.0.1; 0.0.0.0 in a container)")

    build = sub.add_parser("build", help="build TensorRT-LLM engines and render their Triton model repository")
    add_build_arguments(build)
    add_bench_arguments(sub.add_parser("bench", help="load-test the OpenAI endpoint or Triton gRPC; JSON + PNG"))
    _add_keys_commands(sub)
    config = sub.add_parser("config", help="inspect the configuration")
    config.add_subparsers(dest="config_command", required=True).add_parser(
        "show", help="print the effective configuration (all sources merged, secrets masked)"
    )
    return parser


def settings_from(args: argparse.Namespace, flags: dict[str, str]) -> LauncherSettings:
    overrides = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag, None) is not None}
    return load_settings(LauncherSettings, args.config, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build":
        from build_engines.trtllm import run_build

        return run_build(args)
    if args.command == "bench":
        from llmserve.bench.run import main as run_bench

        return run_bench(args)
    try:
        if args.command == "prepare":
            from llmserve.serve import run_prepare

            return run_prepare(settings_from(args, MODEL_FLAGS), args.output)
        if args.command == "serve":
            from llmserve.serve import run_serve

            return run_serve(settings_from(args, MODEL_FLAGS | SERVE_FLAGS))
        if args.command == "api":
            from llmserve.standalone import run_api

            return run_api(settings_from(args, SERVE_FLAGS | {"triton_grpc_url": "triton_grpc_url"}))
        if args.command == "triton":
            from llmserve.standalone import run_triton

            return run_triton(settings_from(args, MODEL_FLAGS | SERVE_FLAGS | {"address": "triton_address"}))
        from llmserve.admin import run_config_show, run_keys

        if args.command == "keys":
            return run_keys(settings_from(args, {}), args)
        return run_config_show(settings_from(args, {}))
    except ConfigFileError as exc:
        print(f"llmserve: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            print(
                f"llmserve: invalid setting {field} (LLMSERVE_{field.upper()}, or `{field}` in the config file): "
                f"{error['msg']}",
                file=sys.stderr,
            )
        return 2
