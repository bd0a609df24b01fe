//! ring benches
fn main() {}
