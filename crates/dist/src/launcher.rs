//! How a process knows that an MPI launcher started it.

/// Environment variables by which MPI launchers tell a process its place: Open MPI's `mpirun`,
/// MPICH's and Intel MPI's Hydra (`PMI_*`), and PMIx-based launchers (Slurm's `srun --mpi=pmix`).
pub const LAUNCHER_VARIABLES: [&str; 4] =
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"];

/// True when an MPI launcher started this process (one of [`LAUNCHER_VARIABLES`] is set).
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}
