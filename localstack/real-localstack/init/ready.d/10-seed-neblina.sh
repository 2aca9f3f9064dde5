#!/bin/bash
# LocalStack init hook (runs inside the LocalStack container when it is ready).
# Installs Neblina's server requirements into a throwaway virtualenv and runs the same
# seeding program the embedded emulator uses, against this LocalStack.
set -euo pipefail
python3 -m venv /tmp/neblina-venv
/tmp/neblina-venv/bin/pip install --quiet -r /neblina/requirements.txt -e /neblina
export AWS_ENDPOINT_URL=http://127.0.0.1:4566
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
/tmp/neblina-venv/bin/python /neblina/localstack/seed.py
