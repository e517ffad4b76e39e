//! HTTP assembly: the middleware stack around the API router.

pub mod limits;
pub(crate) mod middleware;
pub mod stack;
