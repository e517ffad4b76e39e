//! The request-path middlewares, one file each; `crate::http::stack` puts them in order.

pub(crate) mod gate;
