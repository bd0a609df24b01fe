//! The socket transport: the frames of a connection over a stream socket
//! (TCP, Unix, either under TLS), for a peer on another host or one
//! without shared memory. See [`codec`] for the frame format.

pub mod codec;
