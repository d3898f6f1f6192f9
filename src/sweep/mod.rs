//! Many runs, planned once and executed anywhere: the sweep manifest (the list of runs
//! with stable ids and resolved configs), per-run locks so two processes never train one
//! run, per-run states for `--status`, the local executor (a pool of `mica run-task`
//! children) and the Slurm executor (job-array and aggregation scripts). The commands
//! that plan sweeps (`ablate`, `sweep`, `grid`) and the aggregation live in `cli`.

pub mod local;
pub mod lock;
pub mod manifest;
pub mod slurm;
pub mod status;
