//! HTTP assembly: the middleware stack around the API router.

pub mod limits;
pub mod stack;
