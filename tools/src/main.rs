//! isocall CLI
fn main() {}
