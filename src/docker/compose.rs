//! `docker compose` (v2 plugin, preferred) or `docker-compose` (v1).
