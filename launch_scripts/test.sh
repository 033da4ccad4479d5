#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m pytest tests "$@"
