#!/usr/bin/env bash
# mpirun for kiln's --distributed examples and benchmarks:
#   ./scripts/mpirun.sh -np 2 target/release/examples/lenet_mnist --distributed
# Open MPI refuses to start as root (containers, CI) unless two variables say it may, and refuses
# more processes than cores without --oversubscribe; by default it also binds each process to one
# core, which starves a software adapter (lavapipe runs the GPU's work on the process's threads).
# This sets the variables when run as root, adds --oversubscribe --bind-to none, and passes
# everything else to mpirun (--hostfile and the rest work as usual).
set -euo pipefail
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
command -v mpirun >/dev/null || {
  echo "mpirun not found: ./scripts/setup.sh installs Open MPI" >&2
  exit 1
}
exec mpirun --oversubscribe --bind-to none "$@"
