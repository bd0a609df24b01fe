//! A test PKI made with rcgen: a CA, a server certificate for localhost,
//! a client certificate it issued, and a stranger's from a CA nobody
//! trusts. Written once per test process under the target's temporary
//! directory; a child process loads the parent's files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use isocall::stream::{PeerIdentity, TlsClient, TlsServer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files of the test PKI.
pub struct Pki {
    pub dir: PathBuf,
}

/// The common name of the client certificate the CA issued.
pub const CLIENT_CN: &str = "client one";
/// The common name of the stranger's certificate (an untrusted CA's).
pub const STRANGER_CN: &str = "stranger";

fn ca(dir: &Path, name: &str) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    Issuer::new(params, key)
}

fn leaf(dir: &Path, ca: &Issuer<'static, KeyPair>, cn: &str, names: &[&str], client: bool) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{cn}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{cn}.der")), cert.der()).unwrap();
    std::fs::write(dir.join(format!("{cn}.key")), key.serialize_pem()).unwrap();
}

impl Pki {
    /// This process's PKI, made on first use.
    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("isocall-pki-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let trusted = ca(&dir, "ca");
            let rogue = ca(&dir, "rogue-ca");
            leaf(
                &dir,
                &trusted,
                "localhost",
                &["localhost", "127.0.0.1"],
                false,
            );
            leaf(&dir, &trusted, CLIENT_CN, &["client.example"], true);
            leaf(&dir, &rogue, STRANGER_CN, &["stranger.example"], true);
            Pki { dir }
        })
    }

    /// The PKI another process made in `dir`.
    pub fn at(dir: &str) -> Pki {
        Pki { dir: dir.into() }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server's configuration: its certificate, and client
    /// certificates required (issued by the CA).
    pub fn server(&self) -> TlsServer {
        TlsServer::from_pem(
            &self.file("localhost.crt"),
            &self.file("localhost.key"),
            Some(&self.file("ca.pem")),
        )
        .unwrap()
    }

    /// A client presenting the certificate with common name `cn`.
    pub fn client_as(&self, cn: &str) -> TlsClient {
        TlsClient::from_pem(
            &self.file("ca.pem"),
            Some((
                &self.file(&format!("{cn}.crt")),
                &self.file(&format!("{cn}.key")),
            )),
        )
        .unwrap()
    }

    /// The trusted client.
    pub fn client(&self) -> TlsClient {
        self.client_as(CLIENT_CN)
    }

    /// The identity of the certificate with common name `cn`.
    pub fn identity(&self, cn: &str) -> PeerIdentity {
        PeerIdentity::from_der(&std::fs::read(self.file(&format!("{cn}.der"))).unwrap()).unwrap()
    }
}
