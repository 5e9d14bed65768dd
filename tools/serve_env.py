"""serve.env's settings for the repo's launchers: `vision_serve.serve_env` under its old name.

.venv/bin/python -m tools.serve_env             # KEY=VALUE lines, less any variable
                                                # already set in the environment
.venv/bin/python -m tools.serve_env CMD [ARG...]  # run CMD with them (`make run`)
"""

import sys
from pathlib import Path

from vision_serve.serve_env import (
    EDGE_WRAPPER,
    SERVE_ENV,
    main,
    missing_from,
    read_env_file,
    serve_env,
)

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "EDGE_WRAPPER",
    "ROOT",
    "SERVE_ENV",
    "main",
    "missing_from",
    "read_env_file",
    "serve_env",
]

if __name__ == "__main__":
    main(sys.argv[1:])
