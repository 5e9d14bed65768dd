"""A command-line client for the vision service: `python -m vision_client --help`.

It sends images to a running service, a few at a time, and writes one JSON line per image. It
needs only httpx and tqdm (no Ray, no torch), so it runs anywhere the service can be reached.

    cli.py        arguments, finding the images, the run: concurrency, progress, JSON lines
    transport.py  how one image becomes a request and its response a body, per protocol
    retry.py      sending one request, again (same request id) after a dropped connection or a
                  502/503/504, bounded in count and by the image's deadline
"""
