//! trainer crate (in progress).
#![allow(missing_docs)]
pub mod checkpoint;
mod error;
pub mod loss;
pub mod model;
pub mod optim;
pub mod pack;
pub mod sft;
pub mod trainer;
#[cfg(test)]
mod test_util;

pub use error::TrainerError;
