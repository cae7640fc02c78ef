//! trainer crate (in progress).
#![allow(missing_docs)]
mod error;
pub mod loss;
pub mod model;
pub mod pack;

pub use error::TrainerError;
