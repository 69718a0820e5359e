//! Private certificate authorities (`--ca-file`): a PEM bundle trusted on
//! top of the system's roots by every HTTPS client the daemon builds (the
//! `http(s)://` source, the GCS client, and the TLS to an `https://` proxy).
//!
//! The bundle is read and checked once at start ([`CaBundle::load`]), so a
//! missing, unreadable, empty or malformed file stops start-up naming it
//! rather than failing each fetch later.

use std::path::Path;

/// The certificates of a `--ca-file`, DER-encoded, in file order. Empty:
/// the system's roots only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaBundle {
    ders: Vec<Vec<u8>>,
}

impl CaBundle {
    /// Reads the PEM bundle at `path`: every `CERTIFICATE` block in it
    /// (other blocks, such as keys, and text between blocks are ignored).
    /// Errors, as text naming no path (the caller names it): the file can't
    /// be read, holds no certificate, or a certificate that does not decode
    /// or that rustls does not take as a trust anchor.
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let pem = std::fs::read(path).map_err(|e| e.to_string())?;
        let ders = pem_ders(&pem)?;
        if ders.is_empty() {
            return Err(
                "holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)".to_owned(),
            );
        }
        let bundle = CaBundle { ders };
        // What the clients will do with them: builds a verifier over the
        // system's roots plus these, refusing a certificate that is not a
        // usable trust anchor.
        bundle
            .apply(reqwest::Client::builder())
            .build()
            .map_err(|e| format!("not usable as CA certificates: {}", crate::error_chain(&e)))?;
        Ok(bundle)
    }

    /// How many certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.ders.len()
    }

    /// Whether the bundle is empty (the system's roots only).
    pub fn is_empty(&self) -> bool {
        self.ders.is_empty()
    }

    /// `builder` trusting these certificates on top of the system's roots.
    pub(super) fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.ders.is_empty() {
            return builder;
        }
        let certs = self
            .ders
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok());
        builder.tls_certs_merge(certs)
    }
}

/// The DER of each `CERTIFICATE` block in `pem`.
fn pem_ders(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem)
        .map(|cert| {
            cert.map(|c| c.as_ref().to_vec())
                .map_err(|e| format!("not a PEM certificate bundle: {e}"))
        })
        .collect()
}

/// Whether `err`, or one of its causes, is TLS refusing the server's
/// certificate (unknown issuer, expired, wrong name...): trying again won't
/// help until the operator changes the roots or the server its certificate.
pub fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        // An `io::Error` wrapping the TLS error hides it from `source()`.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if matches!(
                candidate.downcast_ref::<rustls::Error>(),
                Some(rustls::Error::InvalidCertificate(_))
            ) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn bad_bundles_are_refused_with_a_reason() {
        let missing = CaBundle::load(Path::new("/nonexistent/assetd-ca.pem")).unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
        let dir = CaBundle::load(Path::new("/")).unwrap_err();
        assert!(dir.contains("directory"), "{dir}");
        let empty = CaBundle::load(file(b"").path()).unwrap_err();
        assert!(empty.contains("no PEM certificate"), "{empty}");
        let text = CaBundle::load(file(b"hello, not a certificate\n").path()).unwrap_err();
        assert!(text.contains("no PEM certificate"), "{text}");
        let bad_base64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = CaBundle::load(file(bad_base64).path()).unwrap_err();
        assert!(err.contains("not a PEM certificate bundle"), "{err}");
        // Valid base64, but not a certificate.
        let not_der = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let err = CaBundle::load(file(not_der).path()).unwrap_err();
        assert!(err.contains("not usable as CA certificates"), "{err}");
    }

    /// A CA certificate whose key was thrown away.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIB2jCCAX+gAwIBAgIUGcHEoTSjdgVVJeFdPj4tHECtECYwCgYIKoZIzj0EAwIw
OTE3MDUGA1UEAwwuYXNzZXRkIHRlc3QgQ0EgKGZpeHR1cmU7IGl0cyBrZXkgaXMg
ZGlzY2FyZGVkKTAgFw0yNjExMzAwNzI1NDBaGA8yMTI2MTEwNjA3MjU0MFowOTE3
MDUGA1UEAwwuYXNzZXRkIHRlc3QgQ0EgKGZpeHR1cmU7IGl0cyBrZXkgaXMgZGlz
Y2FyZGVkKTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABE543MaPA6EdXk0wnPBe
K6HWRZN8I9Y3BxcFOF2Bsm1kbNdJYO6MWAx6a6Ewx2lGdFKREblBevYmJ77IUpzf
+aSjYzBhMB0GA1UdDgQWBBTPoWw3K9kJFHXlSgD+Qe7VvI9xvjAfBgNVHSMEGDAW
gBTPoWw3K9kJFHXlSgD+Qe7VvI9xvjAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB
/wQEAwIBBjAKBggqhkjOPQQDAgNJADBGAiEAi4cTToSPYnaXAqsBAiB8MWmf7VRx
5AOMLtiqjMFmQl8CIQC0w7XHxPddKNYP3YjWud0vMfxzV9UsLMx6yqS0rV/nEA==
-----END CERTIFICATE-----
";

    #[test]
    fn a_bundle_keeps_its_certificates_and_skips_other_blocks() {
        let key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        let text = format!("# internal CAs\n{CA_PEM}{key}{CA_PEM}");
        let bundle = CaBundle::load(file(text.as_bytes()).path()).unwrap();
        assert_eq!(bundle.len(), 2);
        let only_key = CaBundle::load(file(key.as_bytes()).path()).unwrap_err();
        assert!(only_key.contains("no PEM certificate"), "{only_key}");
        assert!(CaBundle::default().is_empty());
    }

    #[test]
    fn certificate_errors_are_found_behind_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Outer(#[source] std::io::Error);
        assert!(is_certificate_error(&Outer(io)));
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, "reset");
        assert!(!is_certificate_error(&Outer(other)));
    }
}
