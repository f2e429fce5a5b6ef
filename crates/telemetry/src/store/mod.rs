//! Embedded store of recent telemetry (to be written).
