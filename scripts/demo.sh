#!/usr/bin/env bash
# Run the demo against local services: `scripts/demo.sh [demo options...]`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh
exec cargo run --release -- demo "$@"
