//! Exit codes, documented in the README and relied on by CI pipelines.

/// Every check passed.
pub const PASSED: i32 = 0;
/// At least one check failed (or could not be decided).
pub const CHECK_FAILED: i32 = 1;
/// Bad input: a malformed lab file, an unknown lab, a usage error.
pub const BAD_INPUT: i32 = 2;
/// The environment: Docker unreachable, image unavailable, port busy, timeout.
pub const ENVIRONMENT: i32 = 3;
/// Interrupted (Ctrl-C or SIGTERM) after tearing down what was started: 128 +
/// SIGINT, as shells report it.
pub const INTERRUPTED: i32 = 130;
