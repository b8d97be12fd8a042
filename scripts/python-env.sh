#!/usr/bin/env bash
# Makes target/python-env: a Python virtual environment with the pinned packages of the tests that
# use real Python clients (scripts/python-env/requirements.txt: grpcio with reflection and health,
# tritonclient, numpy). Made once; made again only when the requirements change. The tests find it
# there by themselves (or at $GPUSLICE_TEST_PYTHON); without it they say they are skipped, except
# under CI=true, where they fail. Needs python3 with its venv module (Debian: apt-get install
# python3-venv) and PyPI; nothing is installed into the system's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=scripts/python-env/requirements.txt
env_dir=${CARGO_TARGET_DIR:-target}/python-env
stamp="$env_dir/requirements.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$env_dir/bin/python3" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
  echo "python-env: $env_dir is up to date" >&2
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  echo "python-env: python3 has no venv module (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
echo "python-env: making $env_dir from $requirements" >&2
rm -rf "$env_dir"
python3 -m venv "$env_dir"
"$env_dir/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
"$env_dir/bin/python3" -c "import grpc, grpc_reflection, grpc_health.v1.health_pb2, tritonclient.grpc, numpy"
echo "$wanted" > "$stamp"
echo "python-env: ready ($(du -sh "$env_dir" | cut -f1))" >&2
