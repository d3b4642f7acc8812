//! When a TLS certificate expires, for the
//! `turnx_tls_certificate_expiry_timestamp_seconds` gauge and its alert.
//!
//! rustls does not expose a certificate's validity, and a full X.509 parser
//! would be a heavy dependency for one field, so this walks just enough DER
//! (RFC 5280 section 4.1) to reach `validity.notAfter`:
//!
//! ```text
//! Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
//!     [0] EXPLICIT version OPTIONAL, serialNumber INTEGER,
//!     signature AlgorithmIdentifier, issuer Name,
//!     validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }
//! ```

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject};

/// Why no expiry time could be read.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The input holds no `CERTIFICATE` PEM section.
    #[error("no certificate in the PEM input")]
    NoCertificate,
    /// The PEM armour or its base64 is broken.
    #[error("malformed PEM: {0}")]
    Pem(pem::Error),
    /// The DER is not a certificate as RFC 5280 lays it out.
    #[error("malformed certificate: {0}")]
    Der(&'static str),
}

/// The notAfter time (unix seconds) of the first certificate in a PEM chain,
/// the server's own certificate by TLS convention.
pub fn not_after(pem: &[u8]) -> Result<u64, CertificateError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|error| match error {
        pem::Error::NoItemsFound => CertificateError::NoCertificate,
        error => CertificateError::Pem(error),
    })?;
    not_after_der(&der)
}

/// The notAfter time (unix seconds) of a DER certificate.
pub fn not_after_der(der: &[u8]) -> Result<u64, CertificateError> {
    let (certificate, _) = element(der, SEQUENCE, "certificate")?;
    let (mut tbs, _) = element(certificate, SEQUENCE, "tbsCertificate")?;
    // Version 1 certificates leave the version out.
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs, VERSION, "version")?.1;
    }
    let (_, rest) = element(tbs, INTEGER, "serialNumber")?;
    let (_, rest) = element(rest, SEQUENCE, "signature")?;
    let (_, rest) = element(rest, SEQUENCE, "issuer")?;
    let (validity, _) = element(rest, SEQUENCE, "validity")?;
    let (_, time) = any_element(validity, "notBefore")?;
    let (tag, content, _) = tlv(time).ok_or(CertificateError::Der("notAfter"))?;
    let time = std::str::from_utf8(content).map_err(|_| CertificateError::Der("notAfter"))?;
    match tag {
        UTC_TIME => utc_time(time),
        GENERALIZED_TIME => generalized_time(time),
        _ => None,
    }
    .ok_or(CertificateError::Der("notAfter is not a valid time"))
}

const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
/// Context-specific, constructed, tag 0.
const VERSION: u8 = 0xa0;

/// The content of the element with `tag` at the start of `input`, and what
/// follows it; `what` names it in the error.
fn element<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertificateError> {
    match tlv(input) {
        Some((found, content, rest)) if found == tag => Ok((content, rest)),
        _ => Err(CertificateError::Der(what)),
    }
}

/// Skips the element at the start of `input`, whatever its tag.
fn any_element<'a>(
    input: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertificateError> {
    let (_, content, rest) = tlv(input).ok_or(CertificateError::Der(what))?;
    Ok((content, rest))
}

/// Splits one DER element into tag, content and the rest of `input`; `None`
/// when it is truncated or uses forms DER forbids or X.509 never needs here
/// (multi-byte tags, indefinite or overlong lengths).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, input) = input.split_first()?;
    let (length, input) = if first < 0x80 {
        (usize::from(first), input)
    } else {
        let count = usize::from(first & 0x7f);
        // 0x80 is the indefinite form; more than 4 bytes is no certificate.
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, input) = input.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, input)
    };
    if input.len() < length {
        return None;
    }
    let (content, rest) = input.split_at(length);
    Some((tag, content, rest))
}

/// `YYMMDDHHMMSSZ`; RFC 5280 reads YY below 50 as 20YY, else 19YY.
fn utc_time(text: &str) -> Option<u64> {
    if text.len() != 13 {
        return None;
    }
    let yy = digits(text, 0, 2)?;
    let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
    civil(year, &text[2..])
}

/// `YYYYMMDDHHMMSSZ` (RFC 5280: UTC, seconds, no fractions).
fn generalized_time(text: &str) -> Option<u64> {
    if text.len() != 15 {
        return None;
    }
    civil(digits(text, 0, 4)?, &text[4..])
}

/// `MMDDHHMMSSZ` in `year`, as unix seconds (none before 1970).
fn civil(year: u64, text: &str) -> Option<u64> {
    if !text.ends_with('Z') {
        return None;
    }
    let month = digits(text, 0, 2)?;
    let day = digits(text, 2, 2)?;
    let hour = digits(text, 4, 2)?;
    let minute = digits(text, 6, 2)?;
    let second = digits(text, 8, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
        || year < 1970
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86400 + hour * 3600 + minute * 60 + second)
}

/// The number at `text[start..start + len]`, ASCII digits only.
fn digits(text: &str, start: usize, len: usize) -> Option<u64> {
    let part = text.get(start..start + len)?;
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date from 1970 on (H. Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Years start in March, so the leap day is the last day of a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146097 + day_of_era - 719468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate valid for `days`, from openssl, or `None`
    /// (with the reason printed) when openssl cannot make one.
    fn openssl_certificate(days: u32) -> Option<Vec<u8>> {
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "/dev/null",
            ])
            .args(["-subj", "/CN=turnx-test", "-days", &days.to_string()])
            .output();
        match output {
            Ok(output) if output.status.success() => Some(output.stdout),
            Ok(output) => {
                println!(
                    "skipped: openssl failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                None
            }
            Err(error) => {
                println!("skipped: openssl not runnable ({error})");
                None
            }
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn openssl_certificates() {
        let before = now();
        let Some(pem) = openssl_certificate(30) else {
            return;
        };
        let expiry = not_after(&pem).unwrap();
        let thirty_days = 30 * 86400;
        assert!(
            (before + thirty_days..=now() + thirty_days + 1).contains(&expiry),
            "{expiry}"
        );

        // Past 2049 the time is a GeneralizedTime.
        let Some(far) = openssl_certificate(40000) else {
            return;
        };
        let far_expiry = not_after(&far).unwrap();
        assert!((before + 40000 * 86400..=now() + 40000 * 86400 + 1).contains(&far_expiry));

        // The first certificate of a chain counts; other sections are skipped.
        let mut chain = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec();
        chain.extend_from_slice(&far);
        chain.extend_from_slice(&pem);
        assert_eq!(not_after(&chain).unwrap(), far_expiry);

        // No truncation of the DER panics or passes.
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        for end in 0..der.len() {
            assert!(not_after_der(&der[..end]).is_err(), "{end}");
        }
        // Nor does flipping any byte panic.
        for i in 0..der.len() {
            let mut mutated = der.to_vec();
            mutated[i] ^= 0xff;
            let _ = not_after_der(&mutated);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            not_after(b""),
            Err(CertificateError::NoCertificate)
        ));
        assert!(matches!(
            not_after(b"hello\x00\xff world"),
            Err(CertificateError::NoCertificate)
        ));
        assert!(matches!(
            not_after(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            Err(CertificateError::Pem(_))
        ));
        assert!(matches!(
            not_after(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
            Err(CertificateError::Der(_))
        ));
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x85, 1, 0, 0, 0, 0],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x1f, 0x01, 0x00],
            &[0x30, 0x02, 0x30, 0x00],
        ] {
            assert!(not_after_der(der).is_err(), "{der:?}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(utc_time("700101000000Z"), Some(0));
        assert_eq!(utc_time("491231235959Z"), Some(2_524_607_999));
        assert_eq!(generalized_time("20500101000000Z"), Some(2_524_608_000));
        assert_eq!(utc_time("231114221320Z"), Some(1_700_000_000));
        assert_eq!(generalized_time("20240229120000Z"), Some(1_709_208_000));
        for bad in [
            "",
            "231114221320",
            "2311142213Z",
            "231114221320+0100",
            "231314221320Z",
            "230230000000Z",
            "230229000000Z",
            "231114241320Z",
            "231114226020Z",
            "2311142213+0Z",
            "69123123595éZ",
            "690101000000Z",
        ] {
            assert_eq!(utc_time(bad), None, "{bad}");
        }
        assert_eq!(generalized_time("19691231235959Z"), None);
        assert_eq!(generalized_time("21000229000000Z"), None);
        assert_eq!(generalized_time("20000229000000Z"), Some(951_782_400));
    }
}
