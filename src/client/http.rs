//! HTTP through reqwest and hyper.
