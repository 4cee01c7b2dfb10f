//! TLS clients through rustls.
