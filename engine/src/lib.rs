//! isocall-engine
