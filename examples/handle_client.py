"""Call the running service through its Python deployment handle (no HTTP).

    make run                                       # in one terminal
    .venv/bin/python examples/handle_client.py photo.jpg [more.png ...]

Prints one JSON result per image; a bad image prints its typed error instead.
"""

import json
import sys

import ray
from ray import serve

from deployments.errors import VisionError


def main(paths: list[str]) -> int:
    ray.init(
        address="auto", namespace="serve", log_to_driver=False
    )  # the cluster `make run` started
    handle = serve.get_app_handle("vision")
    failures = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            result = handle.predict.remote(data, request_id=f"cli-{path}").result()
        except VisionError as err:  # caught by class through Ray's wrapping
            failures += 1
            error = {"code": err.code, "status": err.status, "message": err.message}
            print(json.dumps({"path": path, "error": error}))
            continue
        print(json.dumps({"path": path, **result.to_dict()}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
