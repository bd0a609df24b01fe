//! `stream_hello`: a stream connection's accepting hello, as the client
//! decodes it ([`handshake::decode_stream_hello`]).

use isocall::blob::MAX_CLASSES;
use isocall::raw::handshake::{
    self, HELLO_MAGIC, MAX_STREAM_PAYLOAD, MAX_STREAM_POOL, ServerHelloHead, StreamServerHello,
};

/// `stream_hello`: the input is a server's hello on a stream connection,
/// seen whole and without its first byte (the tag a real reader strips).
/// A decoded hello has the magic, its fixed parts are the message's first
/// bytes, it holds exactly the methods it announces, its pool (if any) is
/// valid and at most [`MAX_STREAM_POOL`] bytes, its frames at most
/// [`MAX_STREAM_PAYLOAD`]; it re-encodes to a hello that decodes to itself
/// (the pool's classes sorted, as a pool keeps them). An error says what
/// is wrong.
pub fn stream_hello(data: &[u8]) {
    for msg in [data, data.get(1..).unwrap_or_default()] {
        decode(msg);
    }
}

fn decode(msg: &[u8]) {
    const HEAD: usize = std::mem::size_of::<ServerHelloHead>();
    const STREAM: usize = std::mem::size_of::<StreamServerHello>();
    const ENTRY: usize = 24;
    let (h, stream, pool) = match handshake::decode_stream_hello(msg) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(h.head.magic, HELLO_MAGIC);
    assert_eq!(bytemuck::bytes_of(&h.head), &msg[..HEAD]);
    assert_eq!(bytemuck::bytes_of(&stream), &msg[HEAD..HEAD + STREAM]);
    assert!(h.head.max_frame as usize <= MAX_STREAM_PAYLOAD);
    let nclasses = stream.nclasses as usize;
    assert!(nclasses <= MAX_CLASSES);
    match &pool {
        Some(p) => {
            assert_eq!(p.classes().len(), nclasses);
            let bytes = p
                .region_size()
                .expect("a pool the client accepted is valid");
            assert!(bytes <= MAX_STREAM_POOL, "a pool of {bytes} bytes accepted");
        }
        None => assert_eq!(nclasses, 0, "classes announced and no pool"),
    }
    assert_eq!(h.methods.len(), h.head.nmethods as usize);
    let names: usize = h
        .methods
        .iter()
        .map(|m| {
            let sig = &m.signature;
            let reply = sig.reply.as_ref().map_or(0, |r| r.name.len());
            m.name.len() + sig.request.name.len() + reply
        })
        .sum();
    assert!(
        HEAD + STREAM + 8 * nclasses + ENTRY * h.methods.len() + names <= msg.len(),
        "the hello holds more than the message"
    );
    let short = h.methods.iter().all(|m| {
        let sig = &m.signature;
        sig.request.name.len() <= handshake::MAX_TYPE_NAME
            && sig
                .reply
                .as_ref()
                .is_none_or(|r| r.name.len() <= handshake::MAX_TYPE_NAME)
    });
    if !short {
        return;
    }
    let classes = pool.as_ref().map_or(&[][..], |p| p.classes());
    let enc = handshake::encode_stream_hello(&h.head, &stream, classes, &h.methods);
    assert_eq!(enc[0], handshake::HELLO);
    let (h2, stream2, pool2) =
        handshake::decode_stream_hello(&enc[1..]).expect("a re-encoded hello decodes");
    assert_eq!(h2, h);
    assert_eq!(stream2, stream);
    assert_eq!(
        pool2.as_ref().map(|p| p.classes().to_vec()),
        pool.as_ref().map(|p| p.classes().to_vec())
    );
}
