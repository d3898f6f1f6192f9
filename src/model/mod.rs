pub mod mult;
