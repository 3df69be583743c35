"""`python -m trt_calib` runs the same CLI as the `trt-calib` command."""

from .cli import main

raise SystemExit(main())
