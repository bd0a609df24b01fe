//! `hello`: the handshake messages ([`handshake::decode_hello`],
//! [`handshake::decode_refusal`], [`ClientHello::decode`]).

use isocall::raw::handshake::{self, ClientHello, HELLO_MAGIC};
use isocall::rpc::Refusal;

/// `hello`: the input is a handshake message. Each decoder sees it whole
/// and without its first byte (the tag a real reader strips):
/// [`handshake::decode_hello`] (a decoded hello holds exactly the methods it
/// announces and re-encodes to itself), [`handshake::decode_refusal`] (a
/// decoded refusal re-encodes to itself) and [`ClientHello::decode`] (only
/// the magic passes).
pub fn hello(data: &[u8]) {
    for msg in [data, data.get(1..).unwrap_or_default()] {
        server_hello(msg);
        refusal(msg);
        client_hello(msg);
    }
}

fn server_hello(msg: &[u8]) {
    const HEAD: usize = std::mem::size_of::<handshake::ServerHelloHead>();
    const ENTRY: usize = 24;
    let h = match handshake::decode_hello(msg) {
        Ok(h) => h,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(h.head.magic, HELLO_MAGIC);
    assert_eq!(bytemuck::bytes_of(&h.head), &msg[..HEAD]);
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
        HEAD + ENTRY * h.methods.len() + names <= msg.len(),
        "the methods hold more than the message"
    );
    // Re-encoded, the hello decodes to itself (the encoder cuts type names
    // to MAX_TYPE_NAME: longer ones only round-trip cut).
    let short = h.methods.iter().all(|m| {
        let sig = &m.signature;
        sig.request.name.len() <= handshake::MAX_TYPE_NAME
            && sig
                .reply
                .as_ref()
                .is_none_or(|r| r.name.len() <= handshake::MAX_TYPE_NAME)
    });
    if short {
        let enc = handshake::encode_hello(&h.head, &h.methods);
        assert_eq!(enc[0], handshake::HELLO);
        assert!(enc.len() - 1 <= msg.len());
        assert_eq!(handshake::decode_hello(&enc[1..]).as_ref(), Ok(&h));
    }
}

fn refusal(msg: &[u8]) {
    match handshake::decode_refusal(msg) {
        Ok(r) => {
            assert!(msg.len() >= 12);
            let _ = r.to_string();
            let long_text = matches!(
                &r,
                Refusal::Policy(isocall::rpc::PolicyRefusal::Custom { reason }) if reason.len() > 1024
            );
            if !long_text {
                let enc = handshake::encode_refusal(&r);
                assert_eq!(enc[0], handshake::REFUSED);
                assert_eq!(handshake::decode_refusal(&enc[1..]).as_ref(), Ok(&r));
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(msg.len() < 12, "a refusal of {} bytes refused", msg.len());
        }
    }
}

fn client_hello(msg: &[u8]) {
    match ClientHello::decode(msg) {
        Ok(h) => {
            assert_eq!(h.magic, HELLO_MAGIC);
            assert_eq!(bytemuck::bytes_of(&h), &msg[..16]);
        }
        Err(e) => {
            let _ = e.to_string();
            let magic = msg
                .get(..8)
                .map(|m| u64::from_le_bytes(m.try_into().unwrap()));
            assert!(msg.len() < 16 || magic != Some(HELLO_MAGIC));
        }
    }
}
