"""The `trt-calib` command line; `main` is the console entry point. Nothing below `cli` imports it."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
