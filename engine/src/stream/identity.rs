//! Who a TLS peer is: the subject and public key of its leaf certificate,
//! and the policy that decides from them.
//!
//! The certificate has been verified by rustls (chain, dates, name or
//! purpose) before anything here reads it; this module only reads two
//! fields out of its DER with a small, bounds-checked reader (it returns
//! an error, never panics, on any bytes), renders the subject as
//! RFC 4514 text and hashes the `SubjectPublicKeyInfo` (SHA-256, as
//! HPKP's `pin-sha256` and `openssl pkey -pubout -outform der | sha256sum`
//! do).

use std::fmt::Write as _;

use super::tls::TlsError;

/// Who the peer of a TLS connection is, from its leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The subject, as RFC 4514 text (most specific first:
    /// `CN=client,O=Example`).
    pub subject: String,
    /// The subject's (last) common name, if it has one.
    pub common_name: Option<String>,
    /// SHA-256 of the DER `SubjectPublicKeyInfo`.
    pub spki_sha256: [u8; 32],
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate.
    ///
    /// # Errors
    ///
    /// [`TlsError::BadCertificate`] if the bytes are not a certificate this
    /// reader understands.
    pub fn from_der(cert: &[u8]) -> Result<PeerIdentity, TlsError> {
        let bad = |what: &str| TlsError::BadCertificate {
            detail: what.to_string(),
        };
        let (cert, _) = tlv(cert, SEQUENCE).ok_or_else(|| bad("not a DER sequence"))?;
        let (tbs, _) = tlv(cert.content, SEQUENCE).ok_or_else(|| bad("no tbsCertificate"))?;
        let mut rest = tbs.content;
        // version [0] EXPLICIT, optional
        if rest.first() == Some(&0xA0) {
            rest = tlv(rest, 0xA0).ok_or_else(|| bad("version"))?.1;
        }
        for what in ["serial", "signature algorithm", "issuer", "validity"] {
            rest = any_tlv(rest).ok_or_else(|| bad(what))?.2;
        }
        let (subject, rest) = tlv(rest, SEQUENCE).ok_or_else(|| bad("subject"))?;
        let (spki, _) = tlv(rest, SEQUENCE).ok_or_else(|| bad("subjectPublicKeyInfo"))?;
        let (text, cn) = render_name(subject.content).ok_or_else(|| bad("subject name"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, spki.whole);
        let mut spki_sha256 = [0u8; 32];
        spki_sha256.copy_from_slice(digest.as_ref());
        Ok(PeerIdentity {
            subject: text,
            common_name: cn,
            spki_sha256,
        })
    }

    /// The SPKI hash in lowercase hex.
    pub fn spki_hex(&self) -> String {
        hex(&self.spki_sha256)
    }
}

/// A rule that allows a peer by its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertMatch {
    /// The whole subject, as [`PeerIdentity::subject`] renders it.
    Subject(String),
    /// The subject's common name.
    CommonName(String),
    /// The SHA-256 of the `SubjectPublicKeyInfo` (a pinned key).
    Spki([u8; 32]),
}

/// Which verified peers a side talks to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertPolicy {
    /// Any peer whose certificate the CA bundle verifies (the default).
    #[default]
    AnyVerified,
    /// Only peers whose verified certificate matches one of these.
    Only(Vec<CertMatch>),
}

impl CertPolicy {
    /// Checks `who` against the policy.
    ///
    /// # Errors
    ///
    /// [`TlsError::NotAllowed`] naming the subject and key refused.
    pub fn check(&self, who: &PeerIdentity) -> Result<(), TlsError> {
        let CertPolicy::Only(rules) = self else {
            return Ok(());
        };
        let ok = rules.iter().any(|r| match r {
            CertMatch::Subject(s) => *s == who.subject,
            CertMatch::CommonName(cn) => who.common_name.as_ref() == Some(cn),
            CertMatch::Spki(h) => *h == who.spki_sha256,
        });
        if ok {
            Ok(())
        } else {
            Err(TlsError::NotAllowed {
                subject: who.subject.clone(),
                spki_sha256: who.spki_hex(),
            })
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// One DER element: its content, and all of its bytes.
struct Tlv<'a> {
    content: &'a [u8],
    whole: &'a [u8],
}

/// The element at the start of `buf` if its tag is `tag`, and the rest.
fn tlv(buf: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (t, e, rest) = any_tlv(buf)?;
    (t == tag).then_some((e, rest))
}

/// The element at the start of `buf` (single-byte tags only), and the rest.
fn any_tlv(buf: &[u8]) -> Option<(u8, Tlv<'_>, &[u8])> {
    let tag = *buf.first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let first = *buf.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &b in buf.get(2..2 + n)? {
            len = (len << 8) | b as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    let whole = buf.get(..end)?;
    Some((
        tag,
        Tlv {
            content: &whole[head..],
            whole,
        },
        &buf[end..],
    ))
}

/// The short name of an attribute type, by its DER OID content.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

/// An OID's dotted form.
fn dotted(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut s = format!(
        "{}.{}",
        (first / 40).min(2),
        first - 40 * (first / 40).min(2)
    );
    let mut v: u64 = 0;
    for &b in rest {
        v = v.checked_mul(128)? | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            let _ = write!(s, ".{v}");
            v = 0;
        }
    }
    Some(s)
}

/// A string value's text, for the string types a name uses.
fn text(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString
        0x0C | 0x13 | 0x16 | 0x1A => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString, taken as Latin-1
        0x14 => Some(bytes.iter().map(|&b| b as char).collect()),
        // BMPString: UCS-2 big-endian
        0x1E if bytes.len().is_multiple_of(2) => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        _ => None,
    }
}

/// Escapes a value per RFC 4514.
fn escape(v: &str, out: &mut String) {
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

/// Renders a Name's RDN sequence as RFC 4514 text (last RDN first), and
/// finds its last common name.
fn render_name(mut rdns: &[u8]) -> Option<(String, Option<String>)> {
    let mut parts = Vec::new();
    let mut cn = None;
    while !rdns.is_empty() {
        let (set, rest) = tlv(rdns, SET)?;
        rdns = rest;
        let mut atvs = set.content;
        let mut rdn = String::new();
        while !atvs.is_empty() {
            let (atv, rest) = tlv(atvs, SEQUENCE)?;
            atvs = rest;
            let (oid, rest) = tlv(atv.content, OID)?;
            let (vtag, value, _) = any_tlv(rest)?;
            if !rdn.is_empty() {
                rdn.push('+');
            }
            let name = short_name(oid.content);
            match (name, text(vtag, value.content)) {
                (Some(n), Some(t)) => {
                    if n == "CN" {
                        cn = Some(t.clone());
                    }
                    rdn.push_str(n);
                    rdn.push('=');
                    escape(&t, &mut rdn);
                }
                (n, _) => {
                    let n = n.map_or_else(|| dotted(oid.content), |n| Some(n.to_string()))?;
                    let _ = write!(rdn, "{n}=#{}", hex(value.whole));
                }
            }
        }
        parts.push(rdn);
    }
    parts.reverse();
    Some((parts.join(","), cn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_reads_back() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_der(cert.der()).unwrap();
        assert_eq!(id.subject, "CN=client one,O=Example\\, Inc.");
        assert_eq!(id.common_name.as_deref(), Some("client one"));
        let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        let spki = ring::digest::digest(&ring::digest::SHA256, &spki_der);
        assert_eq!(&id.spki_sha256[..], spki.as_ref());
        assert_eq!(id.spki_hex().len(), 64);

        assert!(CertPolicy::AnyVerified.check(&id).is_ok());
        for ok in [
            CertMatch::Subject(id.subject.clone()),
            CertMatch::CommonName("client one".into()),
            CertMatch::Spki(id.spki_sha256),
        ] {
            assert!(CertPolicy::Only(vec![ok]).check(&id).is_ok());
        }
        let e = CertPolicy::Only(vec![CertMatch::CommonName("other".into())])
            .check(&id)
            .unwrap_err();
        assert!(matches!(e, TlsError::NotAllowed { .. }));
        assert!(e.to_string().contains("client one"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = PeerIdentity::from_der(&bytes);
        }
        assert!(PeerIdentity::from_der(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert_eq!(
            dotted(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D]).unwrap(),
            "1.2.840.113549"
        );
    }
}
