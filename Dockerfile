# The image every pod of kuberay/rayservice.yaml runs (head, CPU and GPU workers):
#   docker build -t vision-serve:0.1.0 .        # tag = pyproject.toml's version
# Written without a Docker engine to try it on (no base image can be pulled where this project is
# built), so it is unverified and kept this simple.
#
# Ray's CPU image, not `2.58.0-py311-gpu`: torch from PyPI brings its own CUDA libraries, so this
# one image runs the Model on a GPU pod (the node supplies only the driver) and everything else on
# CPU pods. The tag must match rayVersion in the manifest and ray[serve] in pyproject.toml.
FROM rayproject/ray:2.58.0-py311

# The base image's user is the non-root `ray` (uid 1000, group users = gid 100); it owns the
# Python env. Numeric, so that Kubernetes can verify runAsNonRoot (kuberay/rayservice.yaml's
# runAsUser must be this uid; tests/tools/test_kuberay.py checks it).
USER 1000:100

# Pinned dependencies first, in their own layer, so a code change does not reinstall torch.
COPY --chown=ray:users pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; \
        project = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
        print(*project['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt

# Editable, as `make setup` does: `vision_serve.graph:build_app` (serveConfigV2's import_path)
# imports in every Ray worker (whose sys.path does not hold its working directory), relative
# weight paths in the config resolve against this directory (PROJECT_ROOT in
# deployments/runtime/model_source.py), and the RayService's RAY_SERVE_HAPROXY_BINARY_PATH is
# this directory's scripts/haproxy-edge. `pip install --no-deps .` would serve the same from
# site-packages (README: Install); the checkout is kept for that path.
COPY --chown=ray:users . /home/ray/vision-serve
WORKDIR /home/ray/vision-serve
RUN pip install --no-cache-dir --no-deps -e .
