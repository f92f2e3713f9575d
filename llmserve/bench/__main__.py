"""`python -m llmserve.bench ...`: the same as `llmserve bench ...`, without importing the front-end's settings."""

import argparse
import sys

from llmserve.bench.run import add_arguments, main

parser = argparse.ArgumentParser(
    prog="python -m llmserve.bench", description="Load-test the OpenAI endpoint or Triton."
)
add_arguments(parser)
sys.exit(main(parser.parse_args()))
