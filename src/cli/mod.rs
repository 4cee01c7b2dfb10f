//! TODO
/// Runs the CLI.
pub fn run() -> i32 { 0 }
