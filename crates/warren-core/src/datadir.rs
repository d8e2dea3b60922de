//! The data directory: created if missing, locked so that two brokers never share it.
// (stub: filled in by the server/config work)
