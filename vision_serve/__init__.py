"""The vision service as an installed product: its graph, its command and its packaged files.

    graph.py      the deployment graph: `build_app` (serve_config.yaml's import_path) and `app`;
                  in a checkout a link to the top-level graph.py
    cli.py        the `vision-serve` command: run, client, config show / render
    files.py      the packaged default config, serve.env and HAProxy wrapper, found from here
    serve_env.py  serve.env's settings for every launcher
    overlays.py   how an overlay merges into a config (configs/, KubeRay, `config render`)

The stages live in `deployments`, the shipped models in `shapes`, the client in `vision_client`.
"""
