//! isocall-ffi: the C ABI of isocall.
//!
//! **Not built yet.** The C ABI (a cdylib and staticlib with a generated
//! `include/isocall.h`) arrives with the bindings issue, once the connection
//! API it wraps exists. This crate exports nothing today.
#![deny(unsafe_code)]
