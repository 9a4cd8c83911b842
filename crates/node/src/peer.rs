//! The peer service and transport (being written).
