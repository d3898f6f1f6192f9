//! Training: optimiser, schedule, loop and checkpoints.
pub mod loss;
pub mod optim;
