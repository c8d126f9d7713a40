//! dbward-relay: the PostgreSQL relay (placeholder until its issue lands).
