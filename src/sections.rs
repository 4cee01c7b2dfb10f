//! The cheat sheet's sections, in teaching order: `infralab list` groups labs by them.

/// `(id used in lab files, heading)`.
pub const SECTIONS: &[(&str, &str)] = &[
    ("getting-started", "Getting started"),
    ("protocols", "Protocols"),
    ("databases", "Databases"),
    ("caching", "Caching"),
    ("scaling", "Scaling"),
    ("messaging", "Messaging & queues"),
    ("global-coordination", "Global coordination"),
    ("patterns", "Architectural patterns"),
    ("techniques", "Other techniques"),
    ("trade-offs", "Trade-offs"),
];

/// The section with this id.
pub fn find(id: &str) -> Option<(&'static str, &'static str)> {
    SECTIONS.iter().copied().find(|(s, _)| *s == id)
}
