//! PostgreSQL through tokio-postgres.
