//! Audit seals of partitions (cluster mode, ADR 17): being written.
