//! The front door: one pair of public ports (`[server] http`, `https`) for every environment
//! that claims `hosts`, routing each request by its Host (and SNI) to that environment's proxy,
//! terminating TLS with the certificates of [`crate::tls::CertStore`], redirecting plain HTTP,
//! and speaking HTTP/2 where the client offers it (ALPN).

pub mod certs;
