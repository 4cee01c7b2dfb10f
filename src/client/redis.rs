//! Redis through the redis crate.
