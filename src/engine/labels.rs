//! Labels on every container and network infralab creates.

/// Run id: teardown removes everything carrying its value.
pub const RUN: &str = "io.infralab.run";
/// Lab name: `down LAB` finds `up` runs by it.
pub const LAB: &str = "io.infralab.lab";
/// Service name in the lab.
pub const SERVICE: &str = "io.infralab.service";
/// Instance id (`web-2` for a replica).
pub const INSTANCE: &str = "io.infralab.instance";
/// Kind.
pub const KIND: &str = "io.infralab.kind";
/// Pid of the owning process: `gc` removes runs whose process is gone.
pub const PID: &str = "io.infralab.pid";
/// `true` for `infralab up` runs, which outlive their process until `down`.
pub const KEEP: &str = "io.infralab.keep";
