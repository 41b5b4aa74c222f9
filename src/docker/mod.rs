//! A thin, typed wrapper over the `docker` command line (and `docker compose` /
//! `docker-compose` in [`compose`]): what the container runtimes drive.

pub mod compose;
