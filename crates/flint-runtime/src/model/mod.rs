//! Model graphs and their weights.

pub mod config;
pub mod weights;
