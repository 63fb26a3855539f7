//! Shared helpers for Tally integration tests.
