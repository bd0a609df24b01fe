//! `udp_datagram`: a lossy channel's datagram, as a UDP subscriber
//! decodes its header ([`Header::decode`]).

use isocall::channel::udp::datagram::{HEADER_LEN, Header, MAGIC};

/// `udp_datagram`: the input is one datagram. A decoded header has the
/// magic, a body length equal to what follows it, and a sequence number
/// below `u64::MAX`; it re-encodes to the datagram's first bytes (the
/// reserved bytes aside, which a decoder ignores). An error says what is
/// wrong.
pub fn udp_datagram(data: &[u8]) {
    match Header::decode(data) {
        Ok(h) => {
            assert_eq!(&data[..4], &MAGIC);
            assert_eq!(h.body_len as usize, data.len() - HEADER_LEN);
            assert!(h.seq < u64::MAX);
            let mut again = h.encode();
            again[6..8].copy_from_slice(&data[6..8]);
            assert_eq!(&again[..], &data[..HEADER_LEN]);
            assert_eq!(Header::decode(data), Ok(h));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
