//! Training: losses, optimiser, schedule, the loop and checkpoints.
pub mod checkpoint;
pub mod loss;
pub mod optim;
pub mod rundir;
pub mod schedule;
pub mod trainer;
